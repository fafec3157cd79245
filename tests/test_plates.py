"""The plate diagrams, read back from what is drawn on the axes: the arrows join the nodes the
paper's Figures 1 and 2 join, the plate holds the per-client variables and nothing else."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.path as mpath  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from emfl.plates import plate_diagram  # noqa: E402

# From the papers' captions: Figure 1, phi_s ~ N(w, I/lam) explains D_s; Figure 2, theta governs the
# gates z_s, which with w decide phi_s, which explains D_s.
FIGURES = {
    "gaussian": {"edges": {("w", "phi"), ("phi", "D")}, "per_client": {"phi", "D"}, "observed": {"D"}},
    "spike_slab": {"edges": {("theta", "z"), ("z", "phi"), ("w", "phi"), ("phi", "D")},
                   "per_client": {"z", "phi", "D"}, "observed": {"D"}},
}


def drawn(ax):
    circles = {p.get_gid(): p for p in ax.patches if isinstance(p, mpatches.Circle)}
    arrows = [p for p in ax.patches if isinstance(p, mpatches.FancyArrowPatch)]
    [plate] = [p for p in ax.patches if isinstance(p, mpatches.Rectangle) and p.get_gid() == "plate"]
    return circles, arrows, plate


def nearest(circles, point):
    """The node whose circle's edge is closest to ``point``, and how far from that edge it is."""
    gaps = {name: abs(np.hypot(*(np.array(point) - c.center)) - c.radius) for name, c in circles.items()}
    name = min(gaps, key=gaps.get)
    return name, gaps[name]


@pytest.mark.parametrize("model", sorted(FIGURES))
def test_the_diagram_draws_the_papers_figure(model):
    fig, ax = plt.subplots()
    plate_diagram(ax, model)
    circles, arrows, plate = drawn(ax)
    want = FIGURES[model]
    assert set(circles) == {n for e in want["edges"] for n in e}
    edges = set()
    for arrow in arrows:
        path = arrow.get_path()  # in data units: the line from the tail, then the head's outline
        points = path.vertices[path.codes != mpath.Path.CLOSEPOLY]
        tip = points[np.argmax(np.hypot(*(points - points[0]).T))]  # the head's point, farthest from the tail
        path = points
        (tail, d_tail), (head, d_head) = nearest(circles, path[0]), nearest(circles, tip)
        assert d_tail < 0.1 and d_head < 0.1, "an arrow ends away from every node"
        edges.add((tail, head))
    assert edges == want["edges"] and len(arrows) == len(want["edges"])
    (x0, y0), (x1, y1) = plate.get_xy(), (plate.get_x() + plate.get_width(), plate.get_y() + plate.get_height())
    inside = {n for n, c in circles.items()
              if x0 < c.center[0] - c.radius and c.center[0] + c.radius < x1
              and y0 < c.center[1] - c.radius and c.center[1] + c.radius < y1}
    assert inside == want["per_client"]
    shaded = {n for n, c in circles.items() if c.get_facecolor()[:3] != (1.0, 1.0, 1.0) and c.radius > 0.1}
    assert shaded == want["observed"]
    plt.close(fig)


def test_an_unknown_model_is_refused_with_the_known_ones():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="gaussian, spike_slab"):
        plate_diagram(ax, "mixture")
    plt.close(fig)
