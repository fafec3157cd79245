"""The slider panels: a redraw leaves nothing of the previous one behind, and a panel reads
before its cell is run."""

import base64
from functools import partial

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from emfl import linreg, panels
from emfl import spike_slab as ss

W = pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def fedsparse_panel():
    """Tutorial 04's panel (lam0, lam, cross-entropy scale) on a small grid."""
    data = ss.make_sparse_linreg(S=4, theta_true=[1, 1, 0, 0], w_true=[2.0, -2.0, 1.0, 1.0], seed=0)
    test = linreg.held_out(data, n=50, seed=1)
    lam0s = np.array([0.0, 5.0, 1e4])
    grid = ss.trade_off_grid(data, test, lams=(0.0, 1.0), lam0s=lam0s, ce_scales=(1.0, 1e-4), rounds=2)
    draw = partial(panels.fedsparse_panel, grid=grid, theta_true=[1, 1, 0, 0])
    return panels.SliderPanel(
        draw,
        lam0=W.SelectionSlider(options=list(lam0s), value=5.0, description="lambda0"),
        lam=W.SelectionSlider(options=[0.0, 1.0], value=1.0, description="lambda"),
        ce_scale=W.ToggleButtons(options=[("cross-entropy x 1", 1.0), ("x 1e-4", 1e-4)], value=1e-4),
    )


def legend_entries(panel):
    return [[text.get_text() for text in ax.get_legend().get_texts()] for ax in panel.axes]


def test_redrawing_twenty_times_keeps_the_legends(fedsparse_panel):
    """The bars of ``ax.bar`` live in ``ax.containers``: a redraw must remove them too, or each
    redraw adds one more 'server theta_j' to the left legend."""
    panel = fedsparse_panel
    first = legend_entries(panel)  # the panel drew once when it was built
    assert sorted(first[0]) == ["server $\\theta_j$", "share of clients using $j$"]
    for k in range(20):
        panel.render(lam0=[0.0, 5.0, 1e4][k % 3], lam=1.0, ce_scale=1e-4)
        assert legend_entries(panel) == first
    assert len(panel.axes[0].containers) == 1 and len(panel.axes[0].patches) == 4


def test_redraw_returns_the_same_png_at_the_same_values(fedsparse_panel):
    panel = fedsparse_panel
    first = panel.render(lam0=5.0, lam=1.0, ce_scale=1e-4)
    other = panel.render(lam0=1e4, lam=0.0, ce_scale=1.0)
    assert first[:4] == b"\x89PNG" and other != first
    assert panel.render(lam0=5.0, lam=1.0, ce_scale=1e-4) == first


def test_panel_reads_before_its_cell_is_run(fedsparse_panel):
    """The mime bundle: the live widget for a front end with a kernel; otherwise the figure at
    the current values under one line saying to run the cell, or that line alone."""
    from IPython.core.formatters import DisplayFormatter

    panel = fedsparse_panel
    png = panel.render(**panel.values())
    panel.render(lam0=1e4, lam=0.0, ce_scale=1.0)  # a redraw elsewhere leaves the shown figure alone
    bundle, _ = DisplayFormatter().format(panel)  # what IPython sends when a cell ends in `panel`
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
    assert bundle["text/plain"] == "Run the notebook from the top down to this cell (Run All Above Selected Cell, in the Run menu), then this cell, to use the controls (lambda0, lambda, ce_scale)."
    html = bundle["text/html"]
    assert html.startswith("<p>Run the notebook from the top down to this cell (Run All Above Selected Cell, in the Run menu), then this cell, to use the controls (lambda0, lambda, ce_scale).")
    assert "lambda0 = 5, lambda = 1, ce_scale = 0.0001" in html
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
    assert "VBox" not in bundle["text/plain"] + html


def test_labels_are_never_cut(fedsparse_panel):
    for control in fedsparse_panel.controls.values():
        assert control.style.description_width == "initial"
    assert fedsparse_panel.widget.children[0].layout.flex_flow == "row wrap"


def test_the_note_names_unlabelled_controls_by_their_keyword():
    panel = panels.SliderPanel(lambda axes, K: axes[0].plot([0, K]), K=W.IntSlider(value=2, min=1, max=9))
    assert panel.labels() == ["K"]
    assert panel.note() == "Run the notebook from the top down to this cell (Run All Above Selected Cell, in the Run menu), then this cell, to use the controls (K)."
