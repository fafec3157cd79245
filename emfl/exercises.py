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

from emfl import _exercises_more, _exercises_nn, _exercises_toy  # noqa: F401 (they register the checks)
from emfl._exercise_kit import EXERCISES, Exercise, NotAnswered, Verdict, exercise, not_answered, order  # noqa: F401

__all__ = ["check", "grade"]


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
