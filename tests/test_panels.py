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
        ce_scale=W.ToggleButtons(options=[("1", 1.0), ("1e-4", 1e-4)], value=1e-4),  # no description: named ce_scale
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
    assert "lambda0 = 5, lambda = 1, ce_scale = 1e-4" in html  # one way to write 1e-4, as the panel does
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
    assert "VBox" not in bundle["text/plain"] + html


def test_labels_are_never_cut(fedsparse_panel):
    for control in fedsparse_panel.controls.values():
        assert control.style.description_width == "initial"
    assert fedsparse_panel.widget.children[0].layout.flex_flow == "row wrap"


def test_every_control_row_has_a_label(fedsparse_panel):
    """The toggle buttons were built without a description: the panel gives them their keyword, so
    the row says what it sets (a row of bare buttons reading "1" and "1e-4" would not)."""
    assert [c.description for c in fedsparse_panel.controls.values()] == ["lambda0", "lambda", "ce_scale"]
    fedsparse_panel.render(lam0=5.0, lam=1.0, ce_scale=1e-4)
    caption = [t.get_text() for t in fedsparse_panel.axes[0].texts]
    assert caption == [r"$\lambda_0$ = 5, $\lambda$ = 1, ce_scale = 1e-4"]  # the same name and number


def test_format_value_writes_a_small_setting_one_way():
    assert [panels.format_value(v) for v in (1e-4, np.float64(1e-4), 5e-7, 2.5e-4, 1.0, 0.1, 300.0, 1e4, 7)] == [
        "1e-4", "1e-4", "5e-7", "2.5e-4", "1", "0.1", "300", "1e4", "7"]


def _extent(artist, ax, data=False):
    """``artist``'s box in the coordinates of ``ax`` (axes fractions, or data with ``data``)."""
    ax.figure.canvas.draw()
    to = (ax.transData if data else ax.transAxes).inverted()
    return artist.get_window_extent().transformed(to)


def test_the_right_legends_are_off_the_data(fedsparse_panel, fedpa_panel):
    """Tutorials 03 and 04: the right panels' legends sit above the axes (every height inside is
    some curve's somewhere); 04's left legend in the band above 1, which no probability reaches."""
    for panel in (fedsparse_panel, fedpa_panel):
        box = _extent(panel.axes[1].get_legend(), panel.axes[1])
        assert box.y0 >= 1.0 and box.x0 >= 0.0 and box.x1 <= 1.05, box
    left = fedsparse_panel.axes[0]
    assert _extent(left.get_legend(), left, data=True).y0 > 1.0
    assert _extent(left.texts[0], left).y0 >= 1.0  # the settings, above the axes too


@pytest.fixture(scope="module")
def fedpa_data():
    c1 = linreg.anisotropic_client([2.0, 0.0], [1.5, 0.5], 0.0, 20, 2.0, seed=1)
    c2 = linreg.anisotropic_client([-1.0, 2.0], [1.5, 0.5], 1.2, 30, 2.0, seed=2)
    data = linreg.FederatedLinReg((c1, c2))
    return data, 0.5 / max(np.linalg.eigvalsh(c.A).max() for c in data.clients)


@pytest.fixture(scope="module")
def fedpa_panel(fedpa_data):
    """Tutorial 03's panel (K, l, rho), on a smaller budget."""
    data, lr = fedpa_data
    draw = partial(panels.fedpa_panel, data=data, lr=lr, rounds=6)
    return panels.SliderPanel(draw, K=W.IntSlider(value=20, min=10, max=40, step=10, description="local steps K"),
                              l=W.IntSlider(value=3, min=1, max=8, description="samples l"),
                              rho=W.FloatLogSlider(value=10.0, base=10, min=-2, max=3, description="rho"))


@pytest.mark.parametrize("K, l, rho, seed", [(20, 3, 10.0, 0), (20, 3, 10.0, 1), (30, 1, 10.0, 0), (10, 4, 0.0, 0),
                                             (40, 8, 1000.0, 2)])
def test_fedpa_runs_are_the_algorithms_replayed(fedpa_data, K, l, rho, seed):
    """The panel replays FedAvg and FedPA from the clients' minibatches, drawn once: the histories
    are em.run's, whatever the slider values and the seed (a seed of 1 after a seed of 0 must not
    reuse the first one's minibatches)."""
    from emfl import em, fedpa
    from emfl.optim import adam

    data, lr = fedpa_data
    h_avg, h_pa = panels.fedpa_runs(data, K, l, rho, lr, rounds=5, seed=seed)
    burn_in, W_ = panels.fedpa_split(K, l)
    avg = em.run(fedpa.fedavg_sgd(lr, K, 5, adam(0.1), seed=seed), data, np.zeros(2), 5)
    pa = em.run(fedpa.fedpa(lr, l, W_, burn_in, rho, 5, adam(0.1), seed=seed), data, np.zeros(2), 5)
    for mine, theirs in ((h_avg, avg), (h_pa, pa)):
        np.testing.assert_allclose(mine.w, theirs.w, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mine.phis, theirs.phis, rtol=1e-8, atol=1e-10)


def test_a_slider_move_draws_no_new_minibatches(fedpa_panel, fedpa_data):
    """What no slider moves is computed once: the clients' minibatches (and the affine maps of
    their SGD steps) for the largest K so far.  Moving l, rho, or K below it only replays them."""
    data, lr = fedpa_data
    steps = panels._client_steps(data, lr, 5, 0)
    fedpa_panel.render(K=20, l=3, rho=10.0)
    drawn = steps.draws
    assert drawn > 0 and steps.steps >= 20
    for values in ({"K": 20, "l": 5, "rho": 10.0}, {"K": 20, "l": 5, "rho": 0.1}, {"K": 10, "l": 2, "rho": 0.1}):
        fedpa_panel.render(**values)
        assert steps.draws == drawn, values
    fedpa_panel.render(K=steps.steps + 10, l=2, rho=0.1)  # beyond what was drawn: draw more
    assert steps.draws > drawn


def test_the_note_names_unlabelled_controls_by_their_keyword():
    panel = panels.SliderPanel(lambda axes, K: axes[0].plot([0, K]), K=W.IntSlider(value=2, min=1, max=9))
    assert panel.labels() == ["K"]
    assert panel.note() == "Run the notebook from the top down to this cell (Run All Above Selected Cell, in the Run menu), then this cell, to use the controls (K)."
