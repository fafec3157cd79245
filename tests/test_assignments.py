"""The tutorials as an nbgrader course (emfl.assignments): solution regions between nbgrader's
markers, the checks as autograded cells; nbgrader's own generate and autograde give the solutions
full marks and typical mistakes partial marks (when nbgrader, the `course` extra, is installed)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emfl import exercises
from emfl.assignments import SolutionError, assignment_notebook, make_course

ROOT = Path(__file__).resolve().parents[1]


def _cell(source, kind="code"):
    return {"cell_type": kind, "metadata": {}, "source": source, "outputs": [], "execution_count": 3} \
        if kind == "code" else {"cell_type": kind, "metadata": {}, "source": source}


def _nb(*cells):
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _double(x):  # a solution, as solutions/exNN.py writes them
    y = 2 * x
    return y


def test_an_answer_cell_gets_the_solution_between_the_markers():
    nb = _nb(_cell("# Exercise 9.1", "markdown"),
             _cell('def double(x):\n    """Twice x."""\n    ...  # your code'),
             _cell('exercises.check("9.1", double)'),
             _cell("guess = ...  # 1 or 2"),
             _cell('print(exercises.check("9.2", guess, data=data))'))
    out, numbers = assignment_notebook(nb, {"9.1": _double, "9.2": 2})
    assert numbers == ["9.1", "9.2"]
    cells = out["cells"]
    assert cells[1]["source"] == ('def double(x):\n    """Twice x."""\n    ### BEGIN SOLUTION\n    y = 2 * x\n'
                                  '    return y\n    ### END SOLUTION')
    assert cells[3]["source"] == "# 1 or 2\n### BEGIN SOLUTION\nguess = 2\n### END SOLUTION"
    assert cells[2]["source"] == '_verdict = exercises.check("9.1", double)\nassert _verdict.ok, str(_verdict)'
    assert cells[4]["source"].startswith('_verdict = exercises.check("9.2", guess, data=data)\n')
    assert cells[1]["metadata"]["nbgrader"]["solution"] and not cells[1]["metadata"]["nbgrader"]["grade"]
    check = cells[2]["metadata"]["nbgrader"]
    assert check["grade"] and check["locked"] and check["points"] == 1 and check["grade_id"] == "check-9_1"
    assert cells[2]["outputs"] == [] and cells[0] == nb["cells"][0]  # other cells as they were
    with pytest.raises(SolutionError, match="9.2 has no solution"):
        assignment_notebook(nb, {"9.1": _double})
    with pytest.raises(SolutionError, match="no `guess = ...` line"):
        assignment_notebook(_nb(_cell("guess = 3"), _cell('exercises.check("9.2", guess)')), {"9.2": 2})


def test_the_course_holds_every_exercise_once(tmp_path):
    made = make_course(tmp_path)
    numbers = [n for ns in made.values() for n in ns]
    assert sorted(numbers, key=exercises.order) == sorted(exercises.EXERCISES, key=exercises.order)
    assert len(numbers) == len(set(numbers))
    assert (tmp_path / "nbgrader_config.py").read_text().count("course_id") == 1
    for name in made:
        nb = json.loads((tmp_path / "source" / name / f"{name}.ipynb").read_text())
        points = sum(c["metadata"].get("nbgrader", {}).get("points", 0) for c in nb["cells"])
        assert points == len(made[name])
    with pytest.raises(ValueError, match="no tutorial with exercises"):
        make_course(tmp_path / "none", only=["99"])


def _nbgrader(course: Path, *args):
    # nbgrader runs `alembic` from PATH: the environment's own scripts first, as an activated one has them
    env = {**os.environ, "EMFL_FIGURES_DIR": str(course / "figures"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_nbgrader_gives_the_solutions_full_marks_and_mistakes_partial_marks(tmp_path):
    pytest.importorskip("nbgrader", reason="nbgrader is the optional `course` extra: pip install -e '.[course]'")
    from nbgrader.api import Gradebook

    name = "01_fedavg_is_hard_em"
    n = len(make_course(tmp_path, only=["01"])[name])  # one point an exercise
    _nbgrader(tmp_path, "generate_assignment", name, "--force")
    released = json.loads((tmp_path / "release" / name / f"{name}.ipynb").read_text())
    stubs = [c for c in released["cells"] if c["metadata"].get("nbgrader", {}).get("solution")]
    assert len(stubs) == n and all("BEGIN SOLUTION" not in "".join(c["source"]) for c in stubs)
    source = tmp_path / "source" / name / f"{name}.ipynb"
    for student in ("alice", "bob"):
        (tmp_path / "submitted" / student / name).mkdir(parents=True)
    shutil.copy(source, tmp_path / "submitted" / "alice" / name)  # the solutions
    nb = json.loads(source.read_text())  # bob: 1 / (K eta) for the implied precision (1.4), the wrong letter (1.6)
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if "return a * q / (1 - q)" in text and "BEGIN SOLUTION" in text:
            cell["source"] = text.replace("return a * q / (1 - q)", "return 1 / (K * eta)")
        if "answer = 'a'" in text:
            cell["source"] = text.replace("answer = 'a'", "answer = 'b'")
    (tmp_path / "submitted" / "bob" / name / f"{name}.ipynb").write_text(json.dumps(nb))
    _nbgrader(tmp_path, "autograde", name, "--create", "--force")
    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission(name, s).score for s in ("alice", "bob")}
        assert gb.find_submission(name, "alice").max_score == n
    assert scores == {"alice": n, "bob": n - 2}
