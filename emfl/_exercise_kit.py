"""What every exercise's check is made of: the registry of exercises, the verdict a check prints,
and the helpers checks share (closeness, shapes, multiple choice, calling a student's function).
:mod:`emfl.exercises` is the notebooks' entry point; the checks themselves live in
``emfl._exercises_toy``, ``_exercises_nn`` and ``_exercises_more``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Verdict", "Exercise", "EXERCISES", "order", "exercise", "NotAnswered", "not_answered", "call_answer",
           "as_array", "as_number", "as_count", "as_pair", "close", "shape_problem", "choice", "LOW_PRECISION_RTOL"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: ``ok`` (right), ``answered`` (False: nothing to check yet) and the
    line it prints."""

    exercise: str
    ok: bool
    message: str
    answered: bool = True

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if not self.answered:
            return f"[ ] Exercise {self.exercise}: not answered yet. {self.message}".rstrip()
        mark = "[x]" if self.ok else "[!]"
        return f"{mark} Exercise {self.exercise}: {self.message}"

    __repr__ = __str__


@dataclass(frozen=True)
class Exercise:
    """One exercise: its number (``"1.2"``: notebook 01, exercise 2), a title, and the check
    ``fn(answer, **context) -> (ok, message)``."""

    number: str
    title: str
    fn: Callable


EXERCISES: dict = {}


def order(number: str) -> tuple:
    """A sort key for exercise numbers: ``"1.2" < "1.10" < "3.1" < "3b.1" < "4.1"``."""
    m = re.fullmatch(r"(\d+)([a-z]*)\.(\d+)", str(number))
    if m is None:
        raise ValueError(f"an exercise number looks like 1.2 or 3b.1; got {number!r}")
    return int(m.group(1)), m.group(2), int(m.group(3))


def exercise(number: str, title: str):
    """Register the check of exercise ``number`` (a decorator)."""

    order(number)  # a well-formed number

    def register(fn):
        if number in EXERCISES:
            raise ValueError(f"exercise {number} is registered twice")
        EXERCISES[number] = Exercise(number, title, fn)
        return fn

    return register


class NotAnswered(Exception):
    """Raised by :func:`call_answer` for a function whose body is still as handed out."""


def not_answered(answer) -> bool:
    """True for an answer still as handed out: ``...`` or ``None``."""
    return answer is Ellipsis or answer is None


def call_answer(fn, *args, **kwargs):
    """Call a student's function; a body still ``...`` (returns None or Ellipsis) or raising
    NotImplementedError is an answer not given yet."""
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAnswered() from None
    if not_answered(out):
        raise NotAnswered()
    return out


# --------------------------------------------------------------------------- helpers for checks


# An answer computed in float32 (or a torch tensor, float32 by default) carries a relative round-off of
# about 1e-7 a step, up to ~1e-5 after the cancellations of a solve or of 1 - (1 - eta a)^K.  1e-4 passes
# that, while every mistake a check names moves its test cases by a percent or more.
LOW_PRECISION_RTOL = 1e-4


def _low_precision(x) -> bool:
    """True for a float32 (or float16) answer: a numpy array or scalar, a torch tensor, or a list of them."""
    if isinstance(x, (list, tuple)):
        return any(_low_precision(v) for v in x)
    return str(getattr(x, "dtype", "")).replace("torch.", "") in ("float32", "float16", "bfloat16")


def as_array(x) -> np.ndarray:
    """A float array from a list, a tuple, a numpy array or a torch tensor (or lists of tensors)."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    elif isinstance(x, (list, tuple)):
        x = [v.detach().cpu().numpy() if hasattr(v, "detach") else v for v in x]
    return np.asarray(x, dtype=float)


def as_number(x):
    """One number as a float (a Python or numpy number, a 0-d array or tensor), or None (a bool, a
    string, a sequence)."""
    if isinstance(x, (bool, np.bool_, str, bytes)):
        return None
    if hasattr(x, "detach") or isinstance(x, np.ndarray):
        if np.ndim(x) != 0 or str(x.dtype).replace("torch.", "") == "bool":
            return None
        return float(x)
    if isinstance(x, (int, float, np.number)):
        return float(x)
    return None


def as_count(x):
    """A whole number as an int (5, np.int64(5), 5.0), or None (5.5, True, "5", a sequence)."""
    n = as_number(x)
    if n is None or not np.isfinite(n) or n != np.floor(n):
        return None
    return int(n)


def as_pair(x, n: int = 2):
    """``n`` values as a tuple, from a tuple, a list, or ``n`` stacked rows (an array or tensor of shape
    ``(n, ...)``; a flat array is one answer, not ``n``); else None."""
    if isinstance(x, (tuple, list)):
        return tuple(x) if len(x) == n else None
    if (isinstance(x, np.ndarray) or hasattr(x, "detach")) and np.ndim(x) >= 2 and len(x) == n:  # stacked rows
        return tuple(x[i] for i in range(n))
    return None


def close(got, right, rtol=1e-6, atol=1e-9) -> bool:
    """``got`` equals ``right`` up to round-off: float32 answers get LOW_PRECISION_RTOL."""
    if _low_precision(got):
        rtol, atol = max(rtol, LOW_PRECISION_RTOL), max(atol, 1e-6)
    try:
        a, b = as_array(got), as_array(right)
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def shape_problem(got, expected_shape, what: str, finite: bool = True):
    """What is wrong with the shape (or, with ``finite``, the finiteness) of an array answer; None if nothing."""
    try:
        got = as_array(got)
    except (TypeError, ValueError):
        return f"{what} should be an array of shape {tuple(expected_shape)} (a list, tuple or array of numbers)."
    if got.shape != tuple(expected_shape):
        return f"{what} should have shape {tuple(expected_shape)}; yours has shape {got.shape}."
    if finite and not np.all(np.isfinite(got)):
        return f"{what} has entries that are not finite (nan or inf)."
    return None


def choice(answer, right: str, options: str, hints: dict, explain: str):
    a = str(answer).strip().lower().strip("()")
    if a not in options:
        return False, f"answer with one letter of {', '.join(options)}; you gave {answer!r}."
    if a == right:
        return True, f"right. {explain}"
    return False, f"not that one. {hints.get(a, '')}".rstrip()
