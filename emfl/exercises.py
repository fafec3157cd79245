"""The tutorials' exercises and the checks their cells call.

Every notebook ends with exercises; each is followed by a cell that calls its check,
``exercises.check("1.2", answer)``, which prints one line: right, or what is wrong with a hint,
never the answer.  An answer not given yet (``...``, ``None``, or a function whose body is still
``...`` or raises ``NotImplementedError``) is "not answered yet", so the notebooks run from top
to bottom as they are handed out.  The solutions live outside the notebooks, in ``solutions/``;
``tests/test_exercises.py`` runs every check on its solution (it must pass) and on typical wrong
answers (each must fail, with its hint).

The checks are plain functions, so the notebooks work wherever they are opened (Binder, a plain
JupyterLab).  An instructor who grades collects the notebooks and runs ``python -m emfl grade
NOTEBOOK.ipynb ...``, which executes each one in a fresh kernel and tallies the verdicts the
checks themselves recorded (:func:`grade`): what a notebook prints counts for nothing, so a
``print("[x] Exercise 1.1: right")`` passes no exercise.

A check computes the right answer its own way (a closed form, a library routine the notebook
has already checked, a simulation) and compares; when it can tell which mistake was made (a sum
for a mean, a missing prior term), the hint names the idea to revisit.
"""

from __future__ import annotations

import json
import os

from emfl import _exercises_more, _exercises_nn, _exercises_toy  # noqa: F401 (they register the checks)
from emfl._exercise_kit import EXERCISES, Exercise, NotAnswered, Verdict, exercise, not_answered, order  # noqa: F401
from emfl.panels import STATIC

__all__ = ["check", "grade", "GRADE_LOG", "GRADE_TOKEN"]

GRADE_LOG = "EMFL_GRADE_LOG"  # environment: the file check() appends its verdicts to while a notebook is graded
GRADE_TOKEN = "EMFL_GRADE_TOKEN"  # environment: the grader's token for this run, written with every verdict


def _record(verdict: Verdict) -> Verdict:
    """Append ``verdict`` to the grader's log, when a notebook is being graded."""
    path = os.environ.get(GRADE_LOG)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"token": os.environ.get(GRADE_TOKEN, ""), "exercise": verdict.exercise,
                                "ok": verdict.ok, "answered": verdict.answered, "message": verdict.message}) + "\n")
    return verdict


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
        except NotAnswered:
            verdict = Verdict(ex.number, False, "Replace the ... in the function's body with your code.", False)
        except Exception as err:  # the student's code raised: say so, as a hint
            verdict = Verdict(ex.number, False, f"your answer raised {type(err).__name__}: {err}")
    return _record(verdict)


def grade(paths, timeout: int = 1200) -> list:
    """Execute each notebook (a student's copy) in a fresh kernel and return ``[(path, {exercise:
    Verdict})]``: the last verdict of every check it ran, as the check recorded it (not as
    anything printed it)."""
    import secrets
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
            done, log, token = Path(tmp) / path.name, Path(tmp) / "verdicts.jsonl", secrets.token_hex(16)
            # the slider panels draw once, without a live output widget nobody watches
            env = {**os.environ, GRADE_LOG: str(log), GRADE_TOKEN: token, STATIC: "1"}
            proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                                   "--allow-errors", f"--ExecutePreprocessor.timeout={timeout}",
                                   "--output", str(done), str(path)],
                                  capture_output=True, text=True, cwd=path.parent, env=env)
            if proc.returncode or not done.exists():
                raise RuntimeError(f"{path} could not be executed:\n{proc.stderr[-2000:]}")
            verdicts = {}
            for line in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # not a line check() wrote
                if isinstance(rec, dict) and rec.get("token") == token:
                    verdicts[rec["exercise"]] = Verdict(rec["exercise"], bool(rec["ok"]), rec["message"],
                                                        bool(rec["answered"]))
        out.append((path, verdicts))
    return out
