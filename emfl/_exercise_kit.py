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
           "close", "shape_problem", "choice"]


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


def close(a, b, rtol=1e-6, atol=1e-9) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def shape_problem(got, expected_shape, what: str):
    got = np.asarray(got)
    if got.shape != tuple(expected_shape):
        return f"{what} should have shape {tuple(expected_shape)}; yours has shape {got.shape}."
    if not np.all(np.isfinite(got.astype(float))):
        return f"{what} has entries that are not finite (nan or inf)."
    return None


def choice(answer, right: str, options: str, hints: dict, explain: str):
    a = str(answer).strip().lower().strip("()")
    if a not in options:
        return False, f"answer with one letter of {', '.join(options)}; you gave {answer!r}."
    if a == right:
        return True, f"right. {explain}"
    return False, f"not that one. {hints.get(a, '')}".rstrip()
