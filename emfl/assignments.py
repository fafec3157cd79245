"""The tutorials as an nbgrader course: ``python -m emfl assignments OUT`` (or ``./dev assignments``).

Each tutorial with exercises becomes one assignment, ``OUT/source/<notebook>/<notebook>.ipynb``,
beside an ``OUT/nbgrader_config.py``:

* the cell a student answers in (a function whose body is ``...``, or ``name = ...``) becomes a
  *solution* cell: the solution from ``solutions/exNN.py`` between nbgrader's
  ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers, which ``nbgrader generate_assignment``
  replaces with a stub in the students' copy;
* the cell that calls the exercise's check becomes an *autograded test* cell worth one point,
  locked: ``assert`` on the verdict the check computes, so the points come from the check and the
  message a student sees is its hint;
* every other cell is left as it is.

Then, in ``OUT``: ``nbgrader generate_assignment 01_fedavg_is_hard_em``, collect the students'
notebooks into ``submitted/<student>/<assignment>/``, ``nbgrader autograde <assignment>`` and
``nbgrader export``.  nbgrader is an optional extra: ``pip install -e '.[course]'``; this module
only writes files and needs none of it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
import textwrap
from pathlib import Path

from emfl.panels import STATIC

__all__ = ["make_course", "assignment_notebook", "load_solutions", "CHECK", "SolutionError"]

ROOT = Path(__file__).resolve().parents[1]
CHECK = re.compile(r'^(?:print\()?exercises\.check\("(?P<n>[0-9a-z.]+)",\s*(?P<name>[A-Za-z_]\w*)')


class SolutionError(ValueError):
    """An exercise cell this module cannot turn into nbgrader's form."""


def load_solutions(path) -> dict:
    """The ``ANSWERS`` of a solutions file (``solutions/exNN.py``): exercise number -> solution."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"emfl_solutions_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ANSWERS


def _body(fn) -> str:
    """The statements of ``fn``'s body (its source, without the ``def`` line and docstring),
    dedented."""
    source = textwrap.dedent(inspect.getsource(fn))
    node = ast.parse(source).body[0]
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str) and len(body) > 1:
        body = body[1:]
    lines = source.splitlines()
    return textwrap.dedent("\n".join(lines[body[0].lineno - 1:node.end_lineno]))


def _solution_cell(source: str, name: str, answer, number: str) -> str:
    """``source`` (the answer cell as handed out) with the solution between nbgrader's markers."""
    lines = source.splitlines()
    if callable(answer):  # a function whose body is `...`
        for i, line in enumerate(lines):
            if line.strip().startswith("...") and any(l.lstrip().startswith(f"def {name}(") for l in lines[:i]):
                pad = line[:len(line) - len(line.lstrip())]
                body = textwrap.indent(_body(answer), pad)
                return "\n".join(lines[:i] + [f"{pad}### BEGIN SOLUTION", body, f"{pad}### END SOLUTION"] + lines[i + 1:])
        raise SolutionError(f"exercise {number}: no `...` body of def {name}(...) in its answer cell")
    for i, line in enumerate(lines):
        m = re.match(rf"^{name}\s*=\s*\.\.\.\s*(#.*)?$", line)
        if m:
            comment = [m.group(1)] if m.group(1) else []
            return "\n".join(lines[:i] + comment + ["### BEGIN SOLUTION", f"{name} = {answer!r}", "### END SOLUTION"]
                             + lines[i + 1:])
    raise SolutionError(f"exercise {number}: no `{name} = ...` line in its answer cell")


def _meta(grade_id: str, solution: bool, points: int | None = None) -> dict:
    meta = {"grade": points is not None, "grade_id": grade_id, "locked": points is not None,
            "schema_version": 3, "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def assignment_notebook(nb: dict, answers: dict, points: int = 1) -> tuple:
    """``(notebook, numbers)``: the nbgrader form of the tutorial ``nb`` (a dict, nbformat 4) with
    the solutions ``answers`` (exercise number -> solution), and the exercises it holds."""
    nb = json.loads(json.dumps(nb))
    cells, numbers = nb["cells"], []
    for k, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        m = CHECK.match(source.strip())
        if m is None:
            continue
        number, name = m.group("n"), m.group("name")
        if number not in answers:
            raise SolutionError(f"exercise {number} has no solution in solutions/")
        answer_at = next((j for j in range(k - 1, -1, -1) if cells[j]["cell_type"] == "code"), None)
        if answer_at is None:
            raise SolutionError(f"exercise {number}: no answer cell before its check")
        answer_cell = cells[answer_at]
        answer_cell["source"] = _solution_cell("".join(answer_cell["source"]), name, answers[number], number)
        answer_cell.setdefault("metadata", {})["nbgrader"] = _meta(f"answer-{number.replace('.', '_')}", True)
        call = source.strip()
        call = call[len("print("):-1] if call.startswith("print(") else call
        cell["source"] = f"_verdict = {call}\nassert _verdict.ok, str(_verdict)"
        cell.setdefault("metadata", {})["nbgrader"] = _meta(f"check-{number.replace('.', '_')}", False, points)
        numbers.append(number)
    for cell in cells:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb, numbers


CONFIG = '''# the nbgrader configuration of the emfl course (written by `python -m emfl assignments`)
c = get_config()  # noqa: F821
import os  # noqa: E402

os.environ[{static!r}] = "1"  # the panels draw their figure once; no live widget output to wait for
c.CourseDirectory.course_id = "emfl"
c.CourseDirectory.root = {root!r}
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ExecutePreprocessor.timeout = 1200
'''


def make_course(out, tutorials=None, solutions=None, only=None) -> dict:
    """Write the course into ``out``; returns ``{assignment: [exercise numbers]}``.  ``only``: the
    notebooks' name prefixes to include (``["01", "04"]``; default all with exercises)."""
    tutorials = Path(tutorials) if tutorials is not None else ROOT / "tutorials"
    solutions = Path(solutions) if solutions is not None else ROOT / "solutions"
    if not tutorials.is_dir() or not solutions.is_dir():
        raise FileNotFoundError(f"the tutorials ({tutorials}) and their solutions ({solutions}) are not here: "
                                "run this from a clone of the emfl repository")
    out = Path(out)
    made = {}
    for path in sorted(tutorials.glob("[0-9]*.ipynb")):
        prefix = path.name.split("_")[0]
        if only and prefix not in only:
            continue
        sol = solutions / f"ex{prefix}.py"
        if not sol.exists():
            continue
        nb, numbers = assignment_notebook(json.loads(path.read_text()), load_solutions(sol))
        if not numbers:
            continue
        target = out / "source" / path.stem / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        made[path.stem] = numbers
    if not made:
        raise ValueError(f"no tutorial with exercises matched {only!r}")
    (out / "nbgrader_config.py").write_text(CONFIG.format(root=str(out.resolve()), static=STATIC))
    return made
