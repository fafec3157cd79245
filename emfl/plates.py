"""Plate diagrams of the two hierarchical models of the course (the paper's Figures 1 and 2).

A model is a list of nodes (name, TeX label, kind, position) and directed edges; nodes inside the
plate repeat once per client ``s = 1..S``.  Kinds: ``"param"`` (a server parameter, a small filled
dot: a point, not a random variable), ``"latent"`` (an open circle) and ``"observed"`` (a shaded
circle).  :func:`plate_diagram` draws one on an ``ax``.

* ``"gaussian"`` (Figure 1): ``p(phi_s | w) = N(w, I / lam)``, ``p(D_s | phi_s)``; hard-EM on it is
  FedAvg (notebook 01).
* ``"spike_slab"`` (Figure 2): ``p(z_sj | theta_j) = Bern(theta_j)``, ``phi_sj | z_sj, w_j`` from
  the slab ``N(w_j, 1 / lam)`` when ``z_sj = 1`` and the spike at 0 otherwise (Eq. 13-14);
  hard-EM on it is FedSparse (notebook 04).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.patches as mpatches

__all__ = ["Node", "Model", "MODELS", "plate_diagram"]


@dataclass(frozen=True)
class Node:
    name: str
    label: str  # TeX, drawn in the node (or beside a parameter's dot)
    kind: str  # "param", "latent" or "observed"
    xy: tuple
    plate: bool  # repeated per client


@dataclass(frozen=True)
class Model:
    title: str
    nodes: tuple
    edges: tuple  # (parent, child) names

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


MODELS = {
    "gaussian": Model(
        "Figure 1: FedAvg's model",
        (Node("w", r"$w$", "param", (0.5, 3.0), False),
         Node("phi", r"$\phi_s$", "latent", (0.5, 1.9), True),
         Node("D", r"$D_s$", "observed", (0.5, 0.8), True)),
        (("w", "phi"), ("phi", "D"))),
    "spike_slab": Model(
        "Figure 2: FedSparse's model",
        (Node("theta", r"$\theta$", "param", (0.0, 3.0), False),
         Node("w", r"$w$", "param", (1.0, 3.0), False),
         Node("z", r"$z_s$", "latent", (0.0, 1.9), True),
         Node("phi", r"$\phi_s$", "latent", (1.0, 1.9), True),
         Node("D", r"$D_s$", "observed", (1.0, 0.8), True)),
        (("theta", "z"), ("z", "phi"), ("w", "phi"), ("phi", "D"))),
}

RADIUS = 0.3  # of a random variable's circle
DOT = 0.07  # of a parameter's dot


def _size(node: Node) -> float:
    return DOT if node.kind == "param" else RADIUS


def plate_diagram(ax, model: str = "gaussian", fontsize: int = 13) -> Model:
    """Draw the plate diagram of ``model`` (a key of :data:`MODELS`) on ``ax``; returns the model."""
    try:
        m = MODELS[model]
    except KeyError:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}") from None
    for node in m.nodes:
        x, y = node.xy
        if node.kind == "param":
            ax.add_patch(mpatches.Circle(node.xy, DOT, color="black", gid=node.name))
            ax.text(x + 0.14, y + 0.05, node.label, fontsize=fontsize, va="bottom", ha="left")
        else:
            face = "0.8" if node.kind == "observed" else "white"
            ax.add_patch(mpatches.Circle(node.xy, RADIUS, facecolor=face, edgecolor="black", lw=1.3, gid=node.name))
            ax.text(x, y, node.label, fontsize=fontsize, ha="center", va="center")
    for parent, child in m.edges:
        a, b = m.node(parent), m.node(child)
        ax.add_patch(mpatches.FancyArrowPatch(**_trim(a, b), arrowstyle="-|>", mutation_scale=14, lw=1.2,
                                              shrinkA=0, shrinkB=0, gid=f"{parent}->{child}"))
    inside = [n for n in m.nodes if n.plate]
    xs, ys = [n.xy[0] for n in inside], [n.xy[1] for n in inside]
    pad = RADIUS + 0.15
    x0, y0 = min(xs) - pad, min(ys) - pad - 0.3  # room below the lowest node for the plate's label
    ax.add_patch(mpatches.Rectangle((x0, y0), max(xs) - min(xs) + 2 * pad, max(ys) - min(ys) + 2 * pad + 0.3,
                                    fill=False, lw=1.2, gid="plate"))
    ax.text(max(xs) + pad - 0.06, y0 + 0.05, r"$s = 1, \dots, S$", ha="right", va="bottom", fontsize=fontsize - 3)
    allx, ally = [n.xy[0] for n in m.nodes], [n.xy[1] for n in m.nodes]
    ax.set_xlim(min(allx) - 0.9, max(allx) + 0.9)
    ax.set_ylim(min(ally) - 0.9, max(ally) + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(m.title, fontsize=fontsize - 2)
    return m


def _trim(a: Node, b: Node) -> dict:
    """An arrow from the edge of ``a``'s circle (or dot) to the edge of ``b``'s, in data units."""
    (x0, y0), (x1, y1) = a.xy, b.xy
    dx, dy = x1 - x0, y1 - y0
    length = (dx * dx + dy * dy) ** 0.5
    ux, uy = dx / length, dy / length
    start = (x0 + ux * (_size(a) + 0.03), y0 + uy * (_size(a) + 0.03))
    end = (x1 - ux * (_size(b) + 0.02), y1 - uy * (_size(b) + 0.02))
    return {"posA": start, "posB": end}
