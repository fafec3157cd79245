"""The exercises' checks: each accepts its solution (solutions/), rejects typical wrong answers
with a hint, and treats an answer still as handed out as not answered."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

import emfl
from emfl import exercises

ROOT = Path(__file__).resolve().parents[1]


def solutions(notebook: str):
    spec = importlib.util.spec_from_file_location(f"ex{notebook}", ROOT / "solutions" / f"ex{notebook}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ANSWERS


def toy01():
    data = emfl.make_federated_linreg(S=8, d=2, lam_true=1.0, n_range=(4, 30), sigma_range=(0.5, 2.0), seed=0)
    lr = 0.5 / max(np.linalg.eigvalsh(c.A).max() for c in data.clients)
    return {"data": data, "lr": lr}


def clustered02():
    centres = np.array([[-1.5, 0.0], [1.5, 1.0]])
    data = emfl.make_federated_linreg(S=10, d=2, lam_true=6.0, centres=centres, n_range=(10, 40), seed=4)
    return {"data": data, "w0": np.array([[-0.5, 0.0], [0.5, 0.0]])}


def _unstable_responsibilities(phis, ws, lam):
    with np.errstate(invalid="ignore"):
        e = np.exp(-lam / 2 * ((phis[:, None, :] - ws[None, :, :]) ** 2).sum(-1))
        return e / e.sum(axis=1, keepdims=True)


def pair03():
    from emfl import linreg

    c1 = linreg.anisotropic_client([2.0, 0.0], [1.5, 0.5], 0.0, 50, 2.0, seed=1)
    c2 = linreg.anisotropic_client([-1.0, 2.0], [1.5, 0.5], np.pi / 2.5, 50, 2.0, seed=2)
    pair = emfl.FederatedLinReg((c1, c2))
    return {"data": pair, "lr": 0.5 / max(np.linalg.eigvalsh(c.A).max() for c in pair.clients)}


def _biased_shrinkage(samples, rho):
    l, d = samples.shape
    r = 1 / (1 + (l - 1) * rho)
    return r * np.eye(d) + (1 - r) * np.cov(samples, rowvar=False, ddof=0).reshape(d, d)


def _rho_not_rho_l(samples, rho):
    d = samples.shape[1]
    return rho * np.eye(d) + (1 - rho) * np.cov(samples, rowvar=False, ddof=1).reshape(d, d)


def grid04():
    from emfl import linreg, spike_slab as ss

    w_true = [2.0, -1.5, 1.0, 0.5, 0.3, -0.8, 1.2, -0.7, 0.9, 1.1, -1.3, 0.6]
    theta_true = [1, 1, 1, 1, 1, 0.5, 0.5, 0, 0, 0, 0, 0]
    data = ss.make_sparse_linreg(S=10, theta_true=theta_true, w_true=w_true, seed=0)
    test = linreg.held_out(data, n=200, seed=1)
    lam0s = np.array([0.1, 0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 100.0, 300.0])
    # lam = 1 and the 1e-4 scale only: the cell of the notebook's grid the check reads
    return {"grid": ss.trade_off_grid(data, test, lams=(1.0,), lam0s=lam0s, ce_scales=(1e-4,), rounds=6)}


def cifar05():
    from emfl.nn import history

    return {"runs": history.load_runs(ROOT / "results", "cifar10", subdirs=("schedule",))}


def screen05b():
    from emfl.nn import history

    return {"screen": history.load_ablation(ROOT / "results" / "ablation" / "screen")[0]}


def seeds05():
    from emfl.nn import history

    runs = [history.load_runs(ROOT / "results", "cifar10", seed=s, subdirs=("schedule",)) for s in (0, 1, 2)]
    return {"seeds": {name: [r[name] for r in runs] for name in ("FedAvg", "FedSparse mid")}}


def grouped07():
    from emfl import personal_masks as pm

    return {"data": pm.make_grouped_linreg(S=10, d=8, supports=((0, 1, 2, 3), (2, 3, 4, 5)), seed=0)}


def runs08():
    from emfl.nn import probes

    return {"runs": probes.load_info_runs(ROOT / "results" / "info")}


def _erk_scores(shapes, D):
    sizes = np.array([np.prod(s) for s in shapes], dtype=float)
    score = np.array([sum(s) for s in shapes], dtype=float) / sizes
    return score * D * sizes.sum() / (score * sizes).sum()


def _plugin_ity(counts, log=np.log2, skip_zeros=True):
    p = counts / counts.sum()
    q = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = p * log(p / q)
    return float(np.where(p > 0, terms, 0).sum() if skip_zeros else terms.sum())


def _h_given_y(counts, weighted=True):
    h = [-(c[c > 0] / c.sum() * np.log2(c[c > 0] / c.sum())).sum() for c in counts.T]
    w = counts.sum(0) / counts.sum() if weighted else np.full(counts.shape[1], 1 / counts.shape[1])
    return float(np.dot(w, h))


def _h_rows(counts, log=np.log2):
    p = counts.sum(1) / counts.sum()
    p = p[p > 0]
    return float(-(p * log(p)).sum())


# the context an exercise's check cell passes (the notebook's own data)
CONTEXT = {"5b.1": screen05b, "5.1": cifar05, "5.3": cifar05, "5.4": seeds05, "5.5": cifar05, "1.5": toy01, "2.5": clustered02, "3.4": pair03, "4.4": grid04,
           "7.4": grouped07, "8.5": runs08}

# typical wrong answers: each must be rejected
WRONG = {
    "1.1": [lambda phis: phis.sum(axis=0), lambda phis: np.median(phis, axis=0), lambda phis: phis.mean(axis=1),
            lambda phis: phis[0]],
    "1.2": [lambda A, b, w, lam: np.linalg.solve(A + lam * np.eye(len(w)), b),
            lambda A, b, w, lam: np.linalg.solve(A, b + lam * w), lambda A, b, w, lam: np.linalg.solve(A, b),
            lambda A, b, w, lam: w],
    "1.3": [lambda data, w, lam: (w, np.array([w] * data.S)),
            lambda data, w, lam: (np.zeros_like(w), np.array([np.linalg.solve(c.A, c.b) for c in data.clients]))],
    "1.4": [lambda a, K, eta: 1 / (K * eta), lambda a, K, eta: a * (1 - eta * a) ** K],
    "1.5": [1, "ten"],
    "1.6": ["b", "c", "d"],
    "2.1": [lambda phis: phis.mean(axis=0), lambda phis: np.median(phis, axis=1), lambda phis: np.median(phis)],
    "2.2": [1, 4, 6, 11, "five"],
    "2.3": [_unstable_responsibilities,
            lambda phis, ws, lam: np.exp(-lam / 2 * ((phis[:, None] - ws[None]) ** 2).sum(-1)),
            lambda phis, ws, lam: _unstable_responsibilities(phis, ws, 2.0 * np.ones(1))[:, :] * 0 + 1 / len(ws)],
    "2.4": [lambda phis, r: r.T @ phis, lambda phis, r: np.repeat(phis.mean(0)[None], r.shape[1], axis=0),
            lambda phis, r: (r.T @ phis) / r.sum()],
    "2.5": [False, "yes", 1],
    "3.1": [lambda As, mus: np.mean(mus, axis=0), lambda As, mus: sum(A @ m for A, m in zip(As, mus)),
            lambda As, mus: np.linalg.solve(sum(As), sum(mus))],
    "3.2": [_biased_shrinkage, _rho_not_rho_l, lambda samples, rho: np.eye(samples.shape[1])],
    "3.3": [lambda x1, x2, theta, rho: theta - (x1 + x2) / 2, lambda x1, x2, theta, rho: (x1 + x2) / 2 - theta,
            lambda x1, x2, theta, rho: np.linalg.solve(np.outer(x1 - x2, x1 - x2) / 2 + np.eye(len(theta)),
                                                         theta - (x1 + x2) / 2)],
    "3.4": [1, 2, 10, 0, 2.5],
    "3.5": ["b", "c"],
    "4.1": [lambda w_s, pi: (w_s.mean(0), pi.mean(0)), lambda w_s, pi: ((pi * w_s).sum(0) / pi.sum(0), pi.sum(0)),
            lambda w_s, pi: (pi * w_s).sum(0) / pi.sum(0)],
    "4.2": [lambda lam0, theta: lam0 + np.log(theta / (1 - theta)), lambda lam0, theta: lam0 - np.log(theta),
            lambda lam0, theta: lam0],
    "4.3": [lambda pi, theta: float(np.sum(pi * np.log(theta))),
            lambda pi, theta: -float(np.sum(pi * np.log(theta) + (1 - pi) * np.log(1 - theta)))],
    "4.4": [3.0, 30.0, 100.0, 7.0, "20"],
    "4.5": ["b", "c"],
    "3b.1": [62006 * 40 * 1000 / 2**30, 62006 * 8 * 1000 / 2**30, 62006 * 80 * 1000 / 1e9, 65.46, "4.6"],
    "3b.2": ["a", "c", "d"],
    "3b.3": [lambda w, g, m, v, t: (w - 1e-3 * g, m, v, t + 1),
             lambda w, g, m, v, t: (w - 1e-3 * (0.9 * m + 0.1 * g) / (((0.999 * v + 0.001 * g * g)).sqrt() + 1e-8),
                                    0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g, t + 1)],
    "3b.4": ["b", "c"],
    "3b.5": [4 * 878_538, 4 * (878_538 - 801) + 8 * 607 + 76, 4 * (878_538 - 801 - 12_800), 3_464_680.0],
    "7.1": [lambda alpha, t, T, k: round(alpha / 2 * (1 + np.cos(np.pi * t / T)) * k) if t < T else 0,
            lambda alpha, t, T, k: int(np.floor(alpha / 2 * (1 + np.cos(np.pi * t / T)) * k)),
            lambda alpha, t, T, k: alpha / 2 * (1 + np.cos(np.pi * t / T)) if t < T else 0.0],
    "7.2": [lambda shapes, D: [D] * len(shapes), _erk_scores,
            lambda shapes, D: np.minimum(1.0, _erk_scores(shapes, D))],
    "7.3": [4 * 878_538, 1_165_716 - 4 * 618, 1_165_716 - 109_740, 1_165_716 - 109_740 + 877_920, "1165716"],
    "7.4": ["b", "c", "d"],
    "7.5": ["b", "c"],
    "8.1": [lambda units, bins, N: min(units * np.log(bins), np.log(N)), lambda units, bins, N: units * np.log2(bins),
            lambda units, bins, N: np.log2(N)],
    "8.2": [lambda counts: _h_rows(counts, np.log), lambda counts: _h_rows(counts.reshape(-1, 1)),
            lambda counts: float(np.log2(counts.sum()))],
    "8.3": [lambda counts: _plugin_ity(counts, np.log), lambda counts: _plugin_ity(counts, skip_zeros=False),
            lambda counts: _h_rows(counts) - _h_given_y(counts, weighted=False), lambda counts: _h_given_y(counts)],
    "8.4": ["b", "c"],
    "8.5": ["b", "c"],
    "5.1": [1000, 940, 80, 130.5 - 20, "120"],
    "5.2": ["a", "c"],
    "5.3": [4 * (1 - 0.3516) * 878_538, 40 * (1 - 0.1734) * 878_538, 40 * 0.3516 * 878_538, 22_785_720 / 2**30],
    "5.4": [-4.29, 0.0429, 1.0, "4.3"],
    "5.5": ["a", "b", "d"],
    "5b.1": ["a", "b", "d", "e"],
    "5b.2": [1e-4 * 15.942385 / 75, 1e-4 * np.log(99) / 76, 1e-4 * 15.942385 / 76 / 500, 1e-4 * 15.942385 / 801, 0.5, "2e-5"],
    "6.1": [272.11 / 2, 272.11 / 3, 272.11 * 2**30 / 1e9, 27.2, "272"],
    "6.2": [lambda doc, rnd: doc["records"][-1]["cum_gib"] / doc["records"][-1]["round"] * rnd,
            lambda doc, rnd: doc["records"][-1]["cum_gib"],
            lambda doc, rnd: doc["records"][-1]["cum_gib"] + (doc["records"][-1]["bytes_down"] + doc["records"][-1]["bytes_up"]
                             - doc["records"][-2]["bytes_down"] - doc["records"][-2]["bytes_up"]) * (rnd - doc["records"][-1]["round"]) / 1e9],
    "6.3": ["b", "c"],
    "6.4": [20_000, 3597, 2000, 3000.0],
    "6.5": ["b", "c"],
}


def notebooks() -> dict:
    """{notebook number: [exercise numbers its check cells call]}."""
    out = {}
    for path in sorted((ROOT / "tutorials").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        calls = [m for c in nb["cells"] if c["cell_type"] == "code"
                 for m in re.findall(r'exercises\.check\("([0-9]+[a-z]*\.[0-9]+)"', "".join(c["source"]))]
        out[path.name.split("_")[0]] = calls
    return out


def all_answers() -> dict:
    answers = {}
    for path in sorted((ROOT / "solutions").glob("ex*.py")):
        answers.update(solutions(path.stem[2:]))
    return answers


@pytest.mark.parametrize("number", sorted(exercises.EXERCISES))
def test_every_check_accepts_its_solution(number):
    answer = all_answers()[number]
    context = CONTEXT[number]() if number in CONTEXT else {}
    verdict = exercises.check(number, answer, **context)
    assert verdict.ok and verdict.answered, str(verdict)
    assert str(verdict).startswith(f"[x] Exercise {number}: ")


@pytest.mark.parametrize("number", sorted(exercises.EXERCISES))
def test_every_check_rejects_wrong_answers_with_a_hint(number):
    assert WRONG.get(number), f"exercise {number} has no wrong answers to test its check with"
    context = CONTEXT[number]() if number in CONTEXT else {}
    for wrong in WRONG[number]:
        verdict = exercises.check(number, wrong, **context)
        assert verdict.answered and not verdict.ok, (number, str(verdict))
        assert str(verdict).startswith(f"[!] Exercise {number}: ") and len(verdict.message) > 20


def test_a_hint_names_the_mistake_and_never_the_answer():
    verdict = exercises.check("1.1", lambda phis: phis.sum(axis=0))
    assert "added the clients' points up" in verdict.message
    right = np.mean([[1.0, 2.0], [3.0, -2.0], [5.0, 6.0]], axis=0)
    assert "3.0" not in verdict.message and str(right) not in verdict.message
    assert "does not move with w" in exercises.check("1.2", WRONG["1.2"][0]).message


def test_an_answer_as_handed_out_is_not_answered():
    def stub(phis):
        ...  # your code

    def raises(phis):
        raise NotImplementedError

    for answer in (..., None, stub, raises):
        verdict = exercises.check("1.1", answer)
        assert not verdict.answered and not verdict.ok
        assert str(verdict).startswith("[ ] Exercise 1.1: not answered yet")
    broken = exercises.check("1.1", lambda phis: phis.nope)
    assert broken.answered and not broken.ok and "AttributeError" in broken.message
    with pytest.raises(ValueError, match="there is no exercise '9.9'"):
        exercises.check("9.9", 1)


def test_the_notebooks_check_every_exercise_once_and_in_order():
    calls = notebooks()
    registered = sorted(exercises.EXERCISES, key=exercises.order)
    called = [n for nb in calls.values() for n in nb]
    assert sorted(called) == sorted(registered), "every registered exercise is checked in a notebook, once"
    for nb, numbers in calls.items():
        assert numbers == sorted(numbers, key=exercises.order), nb
        assert all(n.split(".")[0] == nb.lstrip("0") for n in numbers), nb
    assert set(all_answers()) == set(registered), "every exercise has a solution"


def test_grade_tallies_a_students_notebook(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from emfl import exercises\nimport numpy as np"),
                nbformat.v4.new_code_cell('exercises.check("1.1", lambda p: np.mean(p, axis=0))'),
                nbformat.v4.new_code_cell('exercises.check("1.2", lambda A, b, w, lam: w)'),
                nbformat.v4.new_code_cell('print(exercises.check("1.6", ...))')]
    path = tmp_path / "student.ipynb"
    nbformat.write(nb, path)
    [(graded, verdicts)] = exercises.grade([path], timeout=300)
    assert graded == path
    assert {n: (v.ok, v.answered) for n, v in verdicts.items()} == {
        "1.1": (True, True), "1.2": (False, True), "1.6": (False, False)}
    with pytest.raises(FileNotFoundError, match="no such notebook"):
        exercises.grade([tmp_path / "missing.ipynb"])


def test_the_command_line_lists_and_grades(tmp_path, capsys):
    from emfl.__main__ import main

    assert main(["exercises"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(exercises.EXERCISES) and listed[0].split()[0] == "1.1"
    assert main(["exercises", str(tmp_path / "nope.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err
