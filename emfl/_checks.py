"""Argument checks shared by the public functions: each error says what to pass instead."""

from __future__ import annotations

import numbers

import numpy as np


def check_positive(name: str, value) -> float:
    """``value`` as a float, or a ValueError if it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite positive number; got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    return float(value)


def check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return float(value)


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number >= 1; got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value!r}")
    return int(value)


def as_vector(name: str, value, d: int | None = None) -> np.ndarray:
    """``value`` as a 1-D float array (of length ``d`` when given)."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector; got an array of shape {arr.shape}")
    if d is not None and arr.shape[0] != d:
        raise ValueError(f"{name} must have length {d}; got length {arr.shape[0]}")
    return arr


def as_matrix(name: str, value, d: int | None = None) -> np.ndarray:
    """``value`` as a 2-D float array of rows (of width ``d`` when given)."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, d); got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} must have {d} columns; got shape {arr.shape}")
    return arr
