"""The repository's promises about itself: Binder asks for what pyproject asks for, the
command line reports bad input, figures are byte-stable."""

import re
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

import emfl
from emfl import panels

ROOT = Path(__file__).resolve().parents[1]


def _requirements(lines):
    reqs = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()
        reqs[name] = line.replace(" ", "")
    return reqs


PINNED = ("torch", "torchvision")  # Binder pins the exact CPU builds the tests passed with


def test_binder_asks_for_the_same_dependencies_as_pyproject():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = _requirements(project["dependencies"])
    text = (ROOT / "binder" / "requirements.txt").read_text()
    binder = _requirements(text.splitlines())
    assert {k: v for k, v in binder.items() if k not in PINNED} == {k: v for k, v in ours.items() if k not in PINNED}
    for name in PINNED:  # an exact version, inside pyproject's range
        pin = Requirement(binder[name])
        (spec,) = pin.specifier
        assert spec.operator == "==", binder[name]
        assert Requirement(ours[name]).specifier.contains(spec.version), (binder[name], ours[name])
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    assert "pip install" in (ROOT / "binder" / "postBuild").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "./dev test" in readme and "./dev tutorials" in readme
    assert "./dev test" in (ROOT / ".ci" / "run").read_text()


def test_every_notebook_is_committed_executed():
    import nbformat

    notebooks = sorted((ROOT / "tutorials").glob("*.ipynb"))
    assert len(notebooks) >= 2
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), path.name
        assert not any(o.output_type == "error" for c in code for o in c.outputs), path.name


def test_save_figure_writes_the_same_bytes_twice(tmp_path):
    def draw():
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2], label="line")
        ax.legend()
        return fig

    a = emfl.save_figure(draw(), "same", tmp_path / "a")
    b = emfl.save_figure(draw(), "same", tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close("all")
    with pytest.raises(ValueError, match="plain file stem"):
        emfl.save_figure(draw(), "../escape", tmp_path)


def test_slider_panel_redraws_and_needs_controls():
    import ipywidgets as W

    data = emfl.make_federated_linreg(S=4, d=2, seed=0)

    def draw(axes, lam, K):
        return panels.fedprox_panel(axes, data, lam, K, 1.0, lr=0.002, rounds=3)

    panel = panels.SliderPanel(draw, lam=W.FloatSlider(value=1.0, min=0.1, max=5), K=W.IntSlider(value=2, min=1, max=9))
    first = panel.render(lam=1.0, K=2)
    other = panel.render(lam=3.0, K=9)
    assert first[:4] == b"\x89PNG" and first != other
    assert panel.render(lam=1.0, K=2) == first  # redrawing on kept axes leaves nothing behind
    assert panels.time_redraw(panel, repeats=1) > 0
    with pytest.raises(ValueError, match="at least one control"):
        panels.SliderPanel(draw)
    with pytest.raises(ValueError, match="2-D federations"):
        panels.fedprox_panel(plt.subplots(1, 2)[1], emfl.make_federated_linreg(S=2, d=3), 1.0, 1, 1.0, 0.01)
    plt.close("all")


def test_cli_reports_a_missing_tutorials_folder(tmp_path, capsys):
    from emfl.__main__ import main

    assert main(["figures", "--tutorials", str(tmp_path / "nowhere")]) == 2  # in process: the parsing is tested
    err = capsys.readouterr().err
    assert "no tutorials folder" in err and "--tutorials" in err


def test_setup_notebook_sets_print_precision_and_seed():
    rng = emfl.setup_notebook(seed=3, precision=2)
    assert np.array2string(np.array([1.23456])) == "[1.23]"
    assert rng.normal() == np.random.default_rng(3).normal()
    emfl.setup_notebook()


def test_fedpa_panel_and_budget_split():
    assert panels.fedpa_split(300, 10) == (60, 24)  # a fifth as burn-in, 240 steps in 10 windows
    assert panels.fedpa_split(10, 30) == (2, 1)  # at least one step per window
    c1 = emfl.linreg.anisotropic_client([1.0, 0.0], [1.0, 0.5], 0.0, 20, 1.0, seed=1)
    c2 = emfl.linreg.anisotropic_client([-1.0, 1.0], [1.0, 0.5], 1.0, 20, 1.0, seed=2)
    data = emfl.FederatedLinReg((c1, c2))
    fig, axes = plt.subplots(1, 2)
    h_avg, h_pa = panels.fedpa_panel(axes, data, K=20, l=3, rho=10.0, lr=0.01, rounds=2)
    assert h_avg.w.shape == h_pa.w.shape == (3, 2)
    with pytest.raises(ValueError, match="2-D federations"):
        panels.fedpa_panel(axes, emfl.make_federated_linreg(S=2, d=3), 20, 3, 1.0, 0.01)
    plt.close("all")


def test_nbval_markers_are_cell_tags_not_student_text():
    """Which outputs nbval does not compare is said by a cell tag, never by a comment the student reads."""
    nbformat = pytest.importorskip("nbformat")
    tagged = 0
    for path in sorted((ROOT / "tutorials").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            assert "NBVAL" not in cell.source and "TINY" not in cell.source, path.name
            tagged += "nbval-ignore-output" in cell.metadata.get("tags", [])
    assert tagged >= 10  # the widget panels, their timings, float32 training printouts


def test_flower_stays_an_optional_extra():
    """emfl, its engine, runner and command line never import flwr; only emfl.flower.apps does."""
    import subprocess
    import sys

    code = ("import sys, emfl, emfl.nn.engine, emfl.nn.runner, emfl.nn.wire, emfl.flower, emfl.__main__; "
            "print('flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("flwr") for r in extras["flower"])
    assert "'.[test,flower,course]'" in (ROOT / "dev").read_text()  # the test command installs it (and nbgrader)
    assert any(r.startswith("nbgrader") for r in extras["course"])


@pytest.mark.numeric
def test_the_kernel_set_asked_for_is_the_one_torch_uses():
    """./dev cpu-matrix sets ATEN_CPU_CAPABILITY for each run: torch must really compute with that
    kernel set (a misspelt or ignored setting would test the machine's own kernels twice)."""
    import os

    import torch

    asked = os.environ.get("ATEN_CPU_CAPABILITY")
    used = torch.backends.cpu.get_cpu_capability()
    assert used in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256") or used.startswith(("SVE", "NEON"))
    if asked:
        assert used == asked.upper(), f"ATEN_CPU_CAPABILITY={asked} but torch computes with {used}"
