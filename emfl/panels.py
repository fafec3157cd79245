"""Figures that run a small experiment and draw it: each is used twice in a tutorial, once
behind sliders (:class:`SliderPanel`) and once at fixed values so the page reads without a kernel."""

from __future__ import annotations

import io
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from emfl import em, linreg
from emfl.viz import plot_points, plot_trajectory

__all__ = ["fedprox_panel", "fedpa_panel", "fedpa_runs", "fedpa_split", "fedsparse_panel", "figure", "SliderPanel",
           "time_redraw"]


def _grid_limits(points, pad=0.6):
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.maximum(hi - lo, 1e-3)
    return (lo[0] - pad * span[0], hi[0] + pad * span[0]), (lo[1] - pad * span[1], hi[1] + pad * span[1])


def fedpa_split(K: int, l: int) -> tuple:
    """FedPA's use of a budget of K local steps: a fifth as burn-in, the rest cut into ``l``
    windows of equal length (at least one step each).  Returns ``(burn_in, steps_per_sample)``."""
    burn_in = K // 5
    return burn_in, max(1, (K - burn_in) // l)


class _ClientSteps:
    """The clients' minibatch SGD of every round, as affine maps of the server's ``w``.

    In round ``r`` client ``s`` starts its SGD at ``w`` and draws its minibatches from its own
    generator ``default_rng([seed, r, s])`` (:func:`emfl.fedpa.fedpa`), whatever ``w``, ``K``,
    ``l`` or ``rho`` are; FedAvg's ``K`` steps and FedPA's burn-in and windows are prefixes of
    that one stream.  A step is affine, ``x_t = x_{t-1} - lr (G_t x_{t-1} - h_t)`` with
    ``G_t = (n/B) X_b^T X_b / sigma2`` and ``h_t = (n/B) X_b^T y_b / sigma2``, so the iterates are
    ``x_t = P_t w + c_t`` with ``P_t`` and ``c_t`` fixed by the minibatches.  They are drawn once;
    a slider move replays the rounds from them (:func:`fedpa_runs`)."""

    def __init__(self, data, lr: float, batch_size: int, seed: int):
        self.data, self.lr, self.batch_size, self.seed = data, float(lr), int(batch_size), int(seed)
        self.rounds, self.steps, self.draws = 0, 0, 0  # draws: minibatches drawn so far

    def ensure(self, rounds: int, steps: int):
        """Have the maps of ``rounds`` rounds and ``steps`` steps; more are drawn from scratch
        (twice the steps held so far at least, so that a slider moving up redraws rarely)."""
        if rounds <= self.rounds and steps <= self.steps:
            return
        rounds, steps = max(rounds, self.rounds), max(steps, 2 * self.steps)
        d, S = self.data.d, self.data.S
        G, h = np.empty((rounds, S, steps, d, d)), np.empty((rounds, S, steps, d))
        for r in range(rounds):
            for s, c in enumerate(self.data.clients):
                rng = np.random.default_rng([self.seed, r, s])  # the client's own stream (fedpa.fedpa)
                idx = np.array([rng.integers(0, c.n, self.batch_size) for _ in range(steps)])
                Xb, scale = c.X[idx], c.n / (self.batch_size * c.sigma2)
                G[r, s] = scale * np.einsum("tbi,tbj->tij", Xb, Xb)
                h[r, s] = scale * np.einsum("tbi,tb->ti", Xb, c.y[idx])
        self.draws += rounds * S * steps
        # x_t = P_t w + c_t for t = 0..steps, and their running sums for the window means
        P, c = np.empty((rounds, S, steps + 1, d, d)), np.empty((rounds, S, steps + 1, d))
        P[:, :, 0], c[:, :, 0] = np.eye(d), 0.0
        for t in range(steps):
            M = np.eye(d) - self.lr * G[:, :, t]
            P[:, :, t + 1] = M @ P[:, :, t]
            c[:, :, t + 1] = np.einsum("rsij,rsj->rsi", M, c[:, :, t]) + self.lr * h[:, :, t]
        self.P, self.c = P, c
        self.sum_P, self.sum_c = np.cumsum(P, axis=2), np.cumsum(c, axis=2)  # sum over x_0..x_t
        self.rounds, self.steps = rounds, steps

    def iterates(self, r: int, t: int, w) -> np.ndarray:
        """Every client's ``x_t`` in round ``r`` from ``w``: shape (S, d)."""
        return self.P[r, :, t] @ w + self.c[r, :, t]

    def window_means(self, r: int, start: int, stop: int, w) -> np.ndarray:
        """Every client's mean of ``x_{start+1} .. x_stop`` in round ``r`` from ``w``: (S, d)."""
        n = stop - start
        return ((self.sum_P[r, :, stop] - self.sum_P[r, :, start]) @ w
                + self.sum_c[r, :, stop] - self.sum_c[r, :, start]) / n


_STEPS: dict = {}  # (the data, lr, batch size, seed) -> _ClientSteps; the few a notebook uses


def _client_steps(data, lr, batch_size, seed) -> _ClientSteps:
    key = (tuple((c.X.tobytes(), c.y.tobytes(), c.sigma2) for c in data.clients), float(lr), int(batch_size), int(seed))
    if key not in _STEPS:
        if len(_STEPS) >= 4:
            _STEPS.pop(next(iter(_STEPS)))  # the oldest
        _STEPS[key] = _ClientSteps(data, lr, batch_size, seed)
    return _STEPS[key]


def fedpa_runs(data, K: int, l: int, rho: float, lr: float, rounds: int = 30, server_lr: float = 0.1,
               batch_size: int = 5, w0=None, seed: int = 0) -> tuple:
    """FedAvg (``K`` minibatch SGD steps) and FedPA (a burn-in and ``l`` IASG samples from the
    same ``K`` steps, :func:`fedpa_split`, shrinkage ``rho``), both with a server Adam at
    ``server_lr``: the histories of ``em.run(fedpa.fedavg_sgd(...))`` and ``em.run(fedpa.fedpa(...))``
    (equal up to round-off), replayed from the clients' minibatches drawn once
    (:class:`_ClientSteps`).  Returns ``(h_avg, h_pa)``."""
    from emfl import fedpa
    from emfl.optim import adam

    w0 = np.zeros(data.d) if w0 is None else np.asarray(w0, dtype=float)
    steps = _client_steps(data, lr, batch_size, seed)
    steps.ensure(rounds, K)
    burn_in, W = fedpa_split(K, l)
    out = []
    for method in ("fedavg", "fedpa"):
        opt = adam(server_lr)
        w, state, ws, sent = w0.copy(), opt.init(w0), [w0.copy()], []
        for r in range(rounds):
            if method == "fedavg":
                deltas = w - steps.iterates(r, K, w)  # w - x_K
            else:
                samples = np.stack([steps.window_means(r, burn_in + k * W, burn_in + (k + 1) * W, w)
                                    for k in range(l)], axis=1)  # (S, l, d)
                # Sigma^-1 (w - mean) by a d x d solve: the panel is 2-D, and delta_dp's O(l^2 d)
                # recursion (which fedpa.fedpa runs) agrees with it to round-off
                deltas = np.array([fedpa.delta_exact(x, w, rho) for x in samples])
            step, state = opt.update(deltas.mean(axis=0), state)
            w = w - step
            ws.append(w)
            sent.append(deltas)
        out.append(em.History(np.array(ws), np.full(rounds + 1, np.nan), np.array(sent)))
    return tuple(out)


_BACKGROUND: dict = {}  # what fedpa_panel draws behind the runs, which no slider moves


def _fedpa_background(data, w0):
    key = (tuple((c.X.tobytes(), c.y.tobytes(), c.sigma2) for c in data.clients), w0.tobytes())
    if key not in _BACKGROUND:
        if len(_BACKGROUND) >= 4:
            _BACKGROUND.pop(next(iter(_BACKGROUND)))
        opt = linreg.pooled_least_squares(data)
        local = np.array([linreg.local_least_squares(c) for c in data.clients])
        xlim, ylim = _grid_limits(np.vstack([local, opt[None], w0[None]]), pad=0.25)
        xs, ys = np.linspace(*xlim, 80), np.linspace(*ylim, 80)
        G = np.stack(np.meshgrid(xs, ys), axis=-1)
        A = sum(c.A for c in data.clients)
        F = 0.5 * np.einsum("...i,ij,...j->...", G - opt, A, G - opt)
        _BACKGROUND[key] = (opt, local, xlim, ylim, xs, ys, F, np.quantile(F, np.linspace(0.01, 0.9, 10)))
    return _BACKGROUND[key]


def fedpa_panel(axes, data, K: int, l: int, rho: float, lr: float, rounds: int = 30,
                server_lr: float = 0.1, batch_size: int = 5, w0=None, seed: int = 0):
    """FedAvg vs FedPA on a 2-D federation of least-squares clients, same local budget K.

    FedAvg runs K minibatch SGD steps; FedPA spends them on a burn-in and ``l`` IASG samples
    (:func:`fedpa_split`) with shrinkage ``rho``.  Both servers use Adam with ``server_lr``
    (:func:`fedpa_runs`: a redraw replays them from the clients' minibatches, drawn once).
    Left: contours of the global objective with its optimum, the clients' own optima and the two
    server trajectories.  Right: distance to the global optimum per round.  Returns the two
    histories."""
    if data.d != 2:
        raise ValueError(f"fedpa_panel draws 2-D federations; this one has d={data.d}")
    ax, ax_d = axes
    w0 = np.zeros(2) if w0 is None else np.asarray(w0, dtype=float)
    h_avg, h_pa = fedpa_runs(data, K, l, rho, lr, rounds, server_lr, batch_size, w0, seed)
    opt, local, xlim, ylim, xs, ys, F, levels = _fedpa_background(data, w0)
    ax.contour(xs, ys, F, levels=levels, colors="0.7", linewidths=0.7, linestyles="solid")
    plot_points(ax, local, label="clients' own optima", color="0.4", marker="s")
    plot_trajectory(ax, h_avg.w, label="FedAvg", color="tab:red")
    plot_trajectory(ax, h_pa.w, label="FedPA", color="tab:blue")
    ax.plot(*opt, "kx", ms=9, mew=2, label="global optimum")
    ax.set(xlim=xlim, ylim=ylim, xlabel=r"$w_1$", ylabel=r"$w_2$")
    ax.legend(loc="lower left", fontsize=8)
    _caption(ax, rf"K={K}, l={l}, $\rho$={rho:.3g}")
    t = np.arange(rounds + 1)
    ax_d.semilogy(t, np.linalg.norm(h_avg.w - opt, axis=1), color="tab:red", label="FedAvg")
    ax_d.semilogy(t, np.linalg.norm(h_pa.w - opt, axis=1), color="tab:blue", label="FedPA")
    ax_d.set(xlabel="round", ylabel="distance to the global optimum")
    _legend_above(ax_d, ncol=2)
    return h_avg, h_pa


def _legend_above(ax, ncol):
    """The legend in one row above the axes, where no data are drawn."""
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=ncol, fontsize=8, frameon=False,
              borderaxespad=0.2, borderpad=0.0, handlelength=1.2, handletextpad=0.4, columnspacing=0.9)


def format_value(value) -> str:
    """A setting as the panels write it: 3 significant digits, and a very small or large number as
    ``1e-4`` or ``1e4`` (never ``0.0001`` in one place and ``1e-04`` in another)."""
    if not isinstance(value, (float, np.floating)):
        return str(value)
    text = f"{value:.3g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        text = f"{mantissa}e{int(exponent)}"
    return text


def _caption(ax, text):
    """A title drawn inside the axes: matplotlib's own titles cost a third of a redraw."""
    ax.text(0.99, 0.98, text, transform=ax.transAxes, ha="right", va="top", fontsize=9,
            bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.9))


def fedprox_panel(axes, data, lam: float, K: int, server_lr: float, lr: float, rounds: int = 15, w0=None):
    """FedProx (lam, K local steps, server learning rate) on a 2-D toy federation.

    Left: contours of Eq. 4 at ``lam`` with its maximiser, the client solutions of the last
    round and the server trajectory.  Right: the gap to the maximum of Eq. 4 along the
    trajectory (FedProx with few local steps stalls above zero: its fixed point is not the
    maximiser).
    """
    if data.d != 2:
        raise ValueError(f"fedprox_panel draws 2-D federations; this one has d={data.d}")
    ax, ax_f = axes
    w0 = np.zeros(2) if w0 is None else np.asarray(w0, dtype=float)
    h = em.run(em.fedprox(lam, K, lr, server_lr), data, w0, rounds)
    w_ml = linreg.ml_w(data, lam)
    pts = np.vstack([h.w, h.phis[-1], w_ml[None]])
    xlim, ylim = _grid_limits(pts)
    xs, ys = np.linspace(*xlim, 80), np.linspace(*ylim, 80)
    F = linreg.objective_on_grid(data, lam, np.stack(np.meshgrid(xs, ys), axis=-1))
    ax.contour(xs, ys, F, levels=np.quantile(F, np.linspace(0.05, 1, 10)), colors="0.7",
               linewidths=0.7, linestyles="solid")
    plot_points(ax, h.phis[-1], label=r"clients $\phi_s$ (last round)", color="tab:orange")
    plot_trajectory(ax, h.w, label="server $w$ (FedProx)", color="tab:blue")
    ax.plot(*w_ml, "kx", ms=9, mew=2, label=r"argmax of Eq. 4")
    ax.set(xlim=xlim, ylim=ylim, xlabel="$w_1$", ylabel="$w_2$")
    _caption(ax, rf"$\lambda$={lam:.3g}, K={K}, server lr={server_lr:.2g}")
    ax.legend(loc="upper left", fontsize=8)
    F_max = linreg.objective(data, w_ml, lam)
    gap = np.array([F_max - linreg.objective(data, w, lam) for w in h.w])
    ax_f.semilogy(np.arange(rounds + 1), np.maximum(gap, 1e-12), marker=".", label="FedProx")
    ax_f.set(xlabel="round", ylabel=r"$\max F - F(w_t)$  (Eq. 4)", ylim=(1e-12, None))
    ax_f.legend(loc="upper right", fontsize=8)
    return h


def fedsparse_panel(axes, grid: dict, lam0: float, lam: float, ce_scale: float, theta_true=None):
    """FedSparse's trade-off on the toy world, read from :func:`emfl.spike_slab.trade_off_grid`.

    Left: the server's gate probabilities ``theta`` per feature at (``lam0``, ``lam``,
    ``ce_scale``), with the share of clients that truly use each feature, under the three
    settings.  Right, against ``lam0``: sparsity, communication as a share of FedAvg's, and the
    clients' held-out error, with the legend above the axes."""
    ax, ax_r = axes
    c = int(np.argmin(np.abs(np.log(grid["ce_scales"]) - np.log(ce_scale))))
    i = int(np.argmin(np.abs(grid["lams"] - lam)))
    j = int(np.argmin(np.abs(np.log((grid["lam0s"] + 1e-12) / (lam0 + 1e-12)))))  # nearest on a log scale
    theta = grid["theta"][c, i, j]
    feats = np.arange(theta.size)
    ax.bar(feats, theta, color="tab:blue", alpha=0.7, label=r"server $\theta_j$")
    if theta_true is not None:
        ax.plot(feats, theta_true, "k_", ms=14, mew=2, label="share of clients using $j$")
    ax.axhline(0.1, color="0.5", lw=0.8, ls=":")
    # probabilities end at 1: the legend sits in the band above, which no bar or marker reaches
    ax.set(xlabel="feature $j$", ylabel="gate probability", ylim=(0, 1.15), xticks=feats)
    ax.legend(loc="upper right", ncol=2, fontsize=8, borderaxespad=0.2, handlelength=1.5, columnspacing=1.2)
    ax.text(1.0, 1.02, rf"$\lambda_0$ = {format_value(float(grid['lam0s'][j]))}, "
                       rf"$\lambda$ = {format_value(float(grid['lams'][i]))}, ce_scale = {format_value(float(grid['ce_scales'][c]))}",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=9)
    lam0s = grid["lam0s"]
    ax_r.semilogx(lam0s, grid["sparsity"][c, i], marker=".", label="sparsity")
    ax_r.semilogx(lam0s, grid["comm"][c, i], marker=".", label="communication / FedAvg's")
    ax_r.semilogx(lam0s, grid["local_mse"][c, i], marker=".", label="local held-out MSE")
    ax_r.axvline(lam0s[j], color="k", lw=0.8)
    ax_r.set(xlabel=r"$\lambda_0$ (nats per parameter)", ylim=(0, 1.6))  # a large error runs off the top; the tutorial prints it
    _legend_above(ax_r, ncol=3)  # every height of the axes is some curve's at some lam0


def _figure(figsize, ncols):
    """A figure with a fixed layout: tight_layout would double the time of a redraw."""
    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.28)
    return fig, axes


def figure(figsize=(10, 4), ncols=2):
    """The figure that :class:`SliderPanel` draws on, for the same panel at fixed values."""
    return _figure(figsize, ncols)


def _reset(ax):
    """Empty ``ax`` but keep its axis objects: ``ax.clear()`` rebuilds every tick, which costs
    about half of a redraw.

    Containers (the bars of ``ax.bar``, error bars) go first, with their artists: a container
    left in ``ax.containers`` would keep its label and add one legend entry per redraw."""
    for container in list(ax.containers):
        container.remove()
    for artist in [*ax.lines, *ax.collections, *ax.texts, *ax.patches, *ax.images, *ax.artists, *ax.tables]:
        artist.remove()
    if ax.legend_ is not None:
        ax.legend_.remove()
    ax.set_prop_cycle(None)
    ax.relim()
    ax.set_autoscale_on(True)


STATIC = "EMFL_STATIC_PANELS"  # environment: set (as the nbgrader course does) to skip the live widget output


class SliderPanel:
    """An ipywidgets panel: ``draw(axes, **values)`` is re-run whenever a slider in
    ``controls`` (name -> widget) moves.  One figure is kept and redrawn, which halves the cost
    of a redraw against making a new figure each time.

    Displayed, the panel offers three forms of itself: the live widget (a front end with a
    kernel), and for a page read before its cell is run, the figure at the sliders' values under
    one line saying to run the cell (HTML), or that line alone (plain text)."""

    def __init__(self, draw, figsize=(10, 4), ncols=2, dpi=80, **controls):
        import ipywidgets as widgets

        if not controls:
            raise ValueError("SliderPanel needs at least one control, e.g. lam=FloatLogSlider(...)")
        self.draw = draw
        self.dpi = dpi
        self.controls = controls
        for name, control in controls.items():
            if hasattr(control, "description") and not control.description:
                control.description = name  # every row of controls says what it sets (toggles have no label of their own)
            style = getattr(control, "style", None)
            if hasattr(style, "description_width"):
                style.description_width = "initial"  # the whole label, never cut
        self.fig, self.axes = _figure(figsize, ncols)
        plt.close(self.fig)  # shown through the Output widget only
        self.png = b""
        self.out = widgets.Output()
        row = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        self.widget = widgets.VBox([row, self.out])
        for control in controls.values():
            control.observe(self._update, names="value")
        self._update()

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def labels(self) -> list:
        """What the controls are called on screen (their descriptions, else their names)."""
        return [getattr(control, "description", "") or name for name, control in self.controls.items()]

    def note(self) -> str:
        """The line shown in place of the sliders on a page whose cell has not been run."""
        return (f"Run the notebook from the top down to this cell (Run All Above Selected Cell, in the Run menu), "
                f"then this cell, to use the controls ({', '.join(self.labels())}).")

    def render(self, **values) -> bytes:
        """Redraw at ``values`` and return the PNG bytes a slider move displays."""
        for ax in np.atleast_1d(self.axes):
            _reset(ax)
        self.draw(self.axes, **values)
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    def _update(self, change=None):
        from IPython.display import Image, clear_output, display

        self.png = png = self.render(**self.values())  # the figure at the sliders' values
        if os.environ.get(STATIC):  # executed without a front end (autograding): no live output widget
            return
        with self.out:
            clear_output(wait=True)
            display(Image(png))

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The live widget, and what a front end without its kernel shows instead: the figure
        at the sliders' values under the line :meth:`note` (HTML), or the line alone."""
        import base64
        import html

        bundle = self.widget._repr_mimebundle_()
        settings = ", ".join(f"{label} = {format_value(value)}"
                             for label, value in zip(self.labels(), self.values().values()))
        png = base64.b64encode(self.png).decode("ascii")
        bundle["text/html"] = (f"<p>{html.escape(self.note())} Below: the figure at {html.escape(settings)}.</p>"
                               f'<img src="data:image/png;base64,{png}" alt="{html.escape(self.note())}">')
        bundle["text/plain"] = self.note()
        return bundle


def time_redraw(panel: SliderPanel, repeats: int = 5) -> float:
    """Median seconds of one redraw of ``panel`` (compute, draw, PNG), as a slider move costs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        panel.render(**panel.values())
        times.append(time.perf_counter() - start)
    return float(np.median(times))
