"""The tutorials' exercises and the checks their cells call.

Every notebook ends with exercises; each is followed by a cell that calls its check,
``exercises.check("1.2", answer)``, which prints one line: right, or what is wrong with a hint,
never the answer.  An answer not given yet (``...``, ``None``, or a function whose body is still
``...`` or raises ``NotImplementedError``) is "not answered yet", so the notebooks run from top
to bottom as they are handed out.  The solutions live outside the notebooks, in ``solutions/``;
``tests/test_exercises.py`` runs every check on its solution (it must pass) and on typical wrong
answers (each must fail, with its hint).

Why plain check functions rather than nbgrader: nbgrader needs a course server (its formgrader,
release and collect steps) and a student who works inside it; these notebooks are also opened
on Binder, on Colab and in a plain JupyterLab, where a function is all there is.  An instructor
who grades collects the notebooks and runs ``python -m emfl exercises NOTEBOOK.ipynb ...``, which
executes each one and tallies its checks (:func:`grade`).

A check computes the right answer its own way (a closed form, a library routine the notebook
has already checked, a simulation) and compares; when it can tell which mistake was made (a sum
for a mean, a missing prior term), the hint names the idea to revisit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Verdict", "Exercise", "EXERCISES", "check", "exercise", "not_answered", "grade", "order"]


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


class _NotAnswered(Exception):
    pass


def not_answered(answer) -> bool:
    """True for an answer still as handed out: ``...`` or ``None``."""
    return answer is Ellipsis or answer is None


def _call(fn, *args, **kwargs):
    """Call a student's function; a body still ``...`` (returns None or Ellipsis) or raising
    NotImplementedError is an answer not given yet."""
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise _NotAnswered() from None
    if not_answered(out):
        raise _NotAnswered()
    return out


def check(number: str, answer, **context) -> Verdict:
    """Check ``answer`` to exercise ``number``; prints (returns) a :class:`Verdict`.  ``context``
    passes what the exercise is about (the notebook's data), where the exercise says so."""
    try:
        ex = EXERCISES[str(number)]
    except KeyError:
        raise ValueError(f"there is no exercise {number!r}; the exercises are {', '.join(EXERCISES)}") from None
    if not_answered(answer):
        verdict = Verdict(ex.number, False, "Replace the ... with your answer, then run this cell again.", False)
    else:
        try:
            ok, message = ex.fn(answer, **context)
            verdict = Verdict(ex.number, bool(ok), message)
        except _NotAnswered:
            verdict = Verdict(ex.number, False, "Replace the ... in the function's body with your code.", False)
        except Exception as err:  # the student's code raised: say so, as a hint
            verdict = Verdict(ex.number, False, f"your answer raised {type(err).__name__}: {err}")
    return verdict


def grade(paths, timeout: int = 1200) -> list:
    """Execute each notebook (a student's copy) and return ``[(path, {exercise: Verdict})]``: the
    last verdict of every check it ran."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such notebook")
        with tempfile.TemporaryDirectory() as tmp:
            done = Path(tmp) / path.name
            proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                                   "--allow-errors", f"--ExecutePreprocessor.timeout={timeout}",
                                   "--output", str(done), str(path)],
                                  capture_output=True, text=True, cwd=path.parent)
            if proc.returncode or not done.exists():
                raise RuntimeError(f"{path} could not be executed:\n{proc.stderr[-2000:]}")
            nb = json.loads(done.read_text())
        verdicts = {}
        for cell in nb["cells"]:
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
                for line in text.splitlines():
                    line = line.strip().strip("'\"")
                    for mark, ok, answered in (("[x] ", True, True), ("[!] ", False, True), ("[ ] ", False, False)):
                        if line.startswith(mark + "Exercise "):
                            number, message = line[len(mark) + 9:].split(":", 1)
                            verdicts[number] = Verdict(number, ok, message.strip(), answered)
        out.append((path, verdicts))
    return out


# --------------------------------------------------------------------------- helpers for checks


def _close(a, b, rtol=1e-6, atol=1e-9) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _shape_problem(got, expected_shape, what: str):
    got = np.asarray(got)
    if got.shape != tuple(expected_shape):
        return f"{what} should have shape {tuple(expected_shape)}; yours has shape {got.shape}."
    if not np.all(np.isfinite(got.astype(float))):
        return f"{what} has entries that are not finite (nan or inf)."
    return None


def _choice(answer, right: str, options: str, hints: dict, explain: str):
    a = str(answer).strip().lower().strip("()")
    if a not in options:
        return False, f"answer with one letter of {', '.join(options)}; you gave {answer!r}."
    if a == right:
        return True, f"right. {explain}"
    return False, f"not that one. {hints.get(a, '')}".rstrip()


# import the checks of every notebook, so that they register
from emfl import _exercises_toy  # noqa: E402,F401
from emfl import _exercises_nn  # noqa: E402,F401
from emfl import _exercises_more  # noqa: E402,F401
