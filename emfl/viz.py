"""Notebook set-up and plot helpers.  Every plot helper draws on an ``ax`` it is given."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib as mpl
import numpy as np

__all__ = [
    "setup_notebook",
    "figures_dir",
    "save_figure",
    "plot_contours",
    "plot_trajectory",
    "plot_points",
]

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "image.cmap": "viridis",
    "svg.hashsalt": "emfl",
    "path.simplify": False,
}


def setup_notebook(seed: int = 0, precision: int = 4) -> np.random.Generator:
    """One call at the top of every tutorial: print precision, figure style, seeded generator.

    Returns ``np.random.default_rng(seed)``; the global NumPy (and torch, if imported) seeds are
    set as well so that every printed number is reproducible.
    """
    np.set_printoptions(precision=precision, suppress=True, floatmode="maxprec")
    mpl.rcParams.update(STYLE)
    np.random.seed(seed)
    torch = __import__("sys").modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
    try:  # inline figures as PNG with tight bounding boxes, when inside IPython
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None:
            ip.run_line_magic("matplotlib", "inline")
            ip.run_line_magic("config", "InlineBackend.figure_formats = ['png']")
    except ImportError:  # pragma: no cover - IPython is a dependency
        pass
    return np.random.default_rng(seed)


def figures_dir() -> Path:
    """Where :func:`save_figure` writes: ``$EMFL_FIGURES_DIR``, else the repository's
    ``figures/`` (next to ``tutorials/``), else ``./figures``."""
    env = os.environ.get("EMFL_FIGURES_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1]
    if (repo / "tutorials").is_dir():
        return repo / "figures"
    return Path.cwd() / "figures"


def save_figure(fig, name: str, directory=None) -> Path:
    """Write ``fig`` as ``<directory>/<name>.png`` (default: :func:`figures_dir`) and return the path.

    The PNG carries no timestamp and no version string, so the same figure gives the same bytes
    on every run.  The notebooks' figures are byte-identical on one machine whatever the number
    of threads (``tests/test_viz.py``); on another CPU NumPy and OpenBLAS may pick other vector
    kernels, whose last bits can move a few anti-aliased pixels."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem like '01_trajectories'; got {name!r}")
    directory = Path(directory) if directory is not None else figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def plot_contours(ax, f, xlim, ylim, levels=20, n=120, **kwargs):
    """Contours of a scalar function ``f(point) -> float`` of two variables on ``ax``."""
    xs = np.linspace(*xlim, n)
    ys = np.linspace(*ylim, n)
    Z = np.array([[f(np.array([x, y])) for x in xs] for y in ys])
    kwargs.setdefault("colors", "0.6")
    kwargs.setdefault("linewidths", 0.7)
    return ax.contour(xs, ys, Z, levels=levels, **kwargs)


def plot_trajectory(ax, ws, label=None, marker=".", **kwargs):
    """A server trajectory ``ws`` (rounds + 1, 2) as a line with a marker per round."""
    ws = np.asarray(ws)
    (line,) = ax.plot(ws[:, 0], ws[:, 1], marker=marker, label=label, **kwargs)
    ax.plot(ws[-1, 0], ws[-1, 1], marker="*", ms=12, color=line.get_color())
    return line


def plot_points(ax, points, label=None, annotate=False, **kwargs):
    """Points (k, 2), e.g. client solutions ``phi_s``, optionally numbered."""
    points = np.asarray(points)
    kwargs.setdefault("s", 25)
    sc = ax.scatter(points[:, 0], points[:, 1], label=label, **kwargs)
    if annotate:
        for i, p in enumerate(points):
            ax.annotate(str(i), p, textcoords="offset points", xytext=(3, 3), fontsize=7)
    return sc
