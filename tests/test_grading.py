"""Grading reads the verdicts the checks record, not what a notebook prints
(emfl.exercises.grade, `python -m emfl grade`)."""

import json

import pytest

from emfl import exercises

nbformat = pytest.importorskip("nbformat")


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_a_printed_verdict_passes_nothing(tmp_path):
    path = _notebook(tmp_path / "student.ipynb",
                     "from emfl import exercises\nimport numpy as np",
                     'print("[x] Exercise 1.1: right: the M-step of a Gaussian prior is the average")',
                     'print("[x] Exercise 1.2: right")\nexercises.check("1.2", lambda A, b, w, lam: w)',
                     # a forged line in the grader's log without the grader's token counts for nothing
                     'import os, json\nopen(os.environ.get(exercises.GRADE_LOG, "/dev/null"), "a").write('
                     'json.dumps({"token": "guess", "exercise": "1.3", "ok": True, "answered": True, '
                     '"message": "right"}) + "\\n")',
                     'exercises.check("1.1", lambda p: np.mean(p, axis=0))')
    [(_, verdicts)] = exercises.grade([path], timeout=300)
    assert {n: v.ok for n, v in verdicts.items()} == {"1.2": False, "1.1": True}


def test_the_last_verdict_counts_and_nothing_is_recorded_outside_grading(tmp_path, monkeypatch):
    path = _notebook(tmp_path / "student.ipynb",
                     "from emfl import exercises\nimport numpy as np",
                     'exercises.check("1.1", lambda p: np.mean(p, axis=0))',
                     'exercises.check("1.1", lambda p: np.sum(p, axis=0))')  # a later wrong answer
    [(_, verdicts)] = exercises.grade([path], timeout=300)
    assert not verdicts["1.1"].ok and "added the clients' points up" in verdicts["1.1"].message
    monkeypatch.delenv(exercises.GRADE_LOG, raising=False)
    log = tmp_path / "log.jsonl"
    assert exercises.check("1.1", ...).answered is False and not log.exists()
    monkeypatch.setenv(exercises.GRADE_LOG, str(log))
    monkeypatch.setenv(exercises.GRADE_TOKEN, "t0")
    exercises.check("1.1", ...)
    assert json.loads(log.read_text()) == {"token": "t0", "exercise": "1.1", "ok": False, "answered": False,
                                           "message": "Replace the ... with your answer, then run this cell again."}


def test_the_grade_command(tmp_path, capsys):
    from emfl.__main__ import main

    path = _notebook(tmp_path / "student.ipynb", "from emfl import exercises\nimport numpy as np",
                     'exercises.check("1.1", lambda p: np.mean(p, axis=0))', 'print("[x] Exercise 1.2: right")')
    assert main(["grade", str(path), "--timeout", "300"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 1 of 1 exercises right" in out and "1.2" not in out
