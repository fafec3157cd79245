"""The toy notebooks are safe to re-run: each is executed with every code cell run twice in a row,
and the second run of every cell prints what the committed notebook shows (the outputs nbval
compares, after the same sanitising).  A cell that changes what an earlier cell set up (a step
size, a list a later figure reads), or that draws from a random stream another cell has already
advanced, prints something else the second time, or makes a later cell fail."""

from __future__ import annotations

import configparser
import copy
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ["01_fedavg_is_hard_em", "02_other_priors_other_servers", "03_fedpa_posterior_averaging",
       "04_fedsparse_from_spike_and_slab", "07_fedspa_personalised_masks", "08_information_flow"]


def sanitisers() -> list:
    """The (regex, replacement) pairs of tutorials/sanitize.cfg, the ones nbval applies."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tutorials" / "sanitize.cfg")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def compared_text(cell, subs) -> list:
    """What nbval compares of a code cell's outputs: streams and plain-text results, sanitised
    (figures, widgets and HTML are not compared)."""
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            text = "".join(o["text"])
        elif o["output_type"] in ("execute_result", "display_data"):
            data = o.get("data", {})
            if "text/plain" not in data or "image/png" in data or "application/vnd.jupyter.widget-view+json" in data:
                continue
            text = "".join(data["text/plain"])
        elif o["output_type"] == "error":
            text = f"{o['ename']}: {o['evalue']}"
        else:
            continue
        for regex, repl in subs:
            text = regex.sub(repl, text)
        out.append((o["output_type"] if o["output_type"] != "display_data" else "execute_result", text))
    # a stream may arrive in pieces: join consecutive pieces of the same kind
    joined = []
    for kind, text in out:
        if joined and joined[-1][0] == kind == "stream":
            joined[-1] = (kind, joined[-1][1] + text)
        else:
            joined.append((kind, text))
    return joined


def ignored(cell) -> bool:
    return bool({"nbval-ignore-output", "nbval-skip"} & set(cell.get("metadata", {}).get("tags", [])))


@pytest.mark.parametrize("name", TOY)
def test_every_cell_run_twice_gives_the_committed_outputs(name, monkeypatch):
    # the panels draw once, without a live output widget: nbclient, unlike a browser or nbval, would
    # wait for the widget forever (the panel cells' outputs are not compared anyway)
    from emfl.panels import STATIC

    monkeypatch.setenv(STATIC, "1")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "tutorials" / f"{name}.ipynb"
    committed = nbformat.read(path, as_version=4)
    doubled = copy.deepcopy(committed)
    cells, second = [], {}
    for i, cell in enumerate(committed.cells):
        if cell.cell_type == "code":
            first = copy.deepcopy(cell)
            first.outputs = []
            cells.append(first)
            second[i] = len(cells)
        cells.append(copy.deepcopy(cell))
    doubled.cells = cells
    client = nbclient.NotebookClient(doubled, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "tutorials")}})
    client.execute()
    subs = sanitisers()
    for i, j in second.items():
        cell = committed.cells[i]
        if ignored(cell):
            continue
        want, got = compared_text(cell, subs), compared_text(doubled.cells[j], subs)
        assert got == want, (f"{name}: cell {i} run a second time prints something else than the committed "
                             f"notebook:\n{cell.source[:300]}\n--- committed\n{want}\n--- second run\n{got}")


def test_the_comparison_sees_a_cell_that_changes_its_own_input():
    # a cell that updates the value it prints shows something else the second time
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    step = "lr = lr / 2\nprint(lr)"
    nb.cells = [nbformat.v4.new_code_cell("lr = 0.5"), nbformat.v4.new_code_cell(step), nbformat.v4.new_code_cell(step)]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    first, second = (compared_text(c, sanitisers()) for c in nb.cells[1:])
    assert first == [("stream", "0.25\n")] and second == [("stream", "0.125\n")]
