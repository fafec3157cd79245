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


def check_finite(name: str, arr: np.ndarray) -> np.ndarray:
    """``arr``, or a ValueError naming how many of its entries are NaN or infinite."""
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite entries of {arr.size}; "
                         "pass finite numbers (look for a division by zero or a missing value upstream)")
    return arr


def as_vector(name: str, value, d: int | None = None) -> np.ndarray:
    """``value`` as a 1-D array of finite floats (of length ``d`` when given)."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector; got an array of shape {arr.shape}")
    if d is not None and arr.shape[0] != d:
        raise ValueError(f"{name} must have length {d}; got length {arr.shape[0]}")
    return check_finite(name, arr)


def as_matrix(name: str, value, d: int | None = None, min_rows: int = 0) -> np.ndarray:
    """``value`` as a 2-D array of finite floats, one row each (of width ``d`` when given, with
    at least ``min_rows`` rows)."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, d); got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} must have {d} columns; got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row{'s' * (min_rows > 1)} (one per client or "
                         f"sample); got {arr.shape[0]}")
    return check_finite(name, arr)


def check_covariance(name: str, cov, d: int) -> np.ndarray:
    """``cov`` as a symmetric positive definite ``d x d`` array, or a ValueError saying which it is not."""
    cov = np.asarray(cov, dtype=float)
    if cov.shape != (d, d):
        raise ValueError(f"{name} must be a {d} x {d} matrix; got shape {cov.shape}")
    check_finite(name, cov)
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(cov).max())):
        raise ValueError(f"{name} must be symmetric (a covariance); got a matrix that differs from its transpose")
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        low = float(np.linalg.eigvalsh(cov).min())
        raise ValueError(f"{name} must be positive definite (a covariance); its smallest eigenvalue is {low:.3g}") from None
    return cov
