"""Solutions to the exercises of notebook 07 (for instructors; tests/test_exercises.py checks them).
Each function imports what it needs: nbgrader pastes its body into the notebook."""

import math

from torch import nn

from emfl.nn import models


def prune_count(prune_alpha, t, T_end, k):  # 7.1: floor(alpha_t k), alpha_t = prune_alpha / 2 (1 + cos(pi t / T_end))
    import math

    return math.floor(prune_alpha / 2 * (1 + math.cos(math.pi * t / T_end)) * k) if t < T_end else 0


def erk_densities(shapes, D):  # 7.2: D_l = eps (sum of dims) / (product of dims), capped at 1, eps solved again
    import math

    sizes = [math.prod(s) for s in shapes]
    score = [sum(s) / n for s, n in zip(shapes, sizes)]
    dense = set()
    while True:
        rest = [l for l in range(len(shapes)) if l not in dense]
        budget = D * sum(sizes) - sum(sizes[l] for l in dense)
        eps = budget / sum(score[l] * sizes[l] for l in rest) if rest else 0.0
        over = {l for l in rest if eps * score[l] > 1}
        if not over:
            return [1.0 if l in dense else eps * score[l] for l in range(len(shapes))]
        dense |= over


def _lenet():
    net = models.make_model("lenet5", (3, 32, 32), 10)
    shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return net, shapes, [math.prod(s) for s in shapes]


def bytes_up(D=0.3):  # 7.3: 4 bytes a kept weight and a bias, and the moved mask at a bit a maskable weight
    net, shapes, sizes = _lenet()
    kept = sum(round(f * n) for f, n in zip(erk_densities(shapes, D), sizes))
    biases = models.num_parameters(net) - sum(sizes)
    return 4 * (kept + biases) + math.ceil(sum(sizes) / 8)


def forward_macs(D=0.3):  # 7.6: each layer's kept weights times the positions it is applied at
    net, shapes, sizes = _lenet()
    positions = [m // n for m, n in zip(models.layer_macs(net, (3, 32, 32)), sizes)]  # 28 x 28, 10 x 10, 1, 1
    return sum(round(f * n) * p for f, n, p in zip(erk_densities(shapes, D), sizes, positions))


def freeze_round(prune_alpha, T_end, k):  # 7.7: the first t with alpha_t k < 1, solved for t
    import math

    if prune_alpha * k < 1:
        return 0
    return min(T_end, math.floor(T_end / math.pi * math.acos(2 / (prune_alpha * k) - 1)) + 1)


ANSWERS = {"7.1": prune_count, "7.2": erk_densities,
           "7.3": bytes_up(0.3),  # 1,165,716 bytes (814,548 at D = 0.2: section 5's 6.991 MiB / 9)
           "7.4": "a",  # no mask moves from its random start: none is exact
           "7.5": "a",  # the server's dense average is a model no client uses
           "7.6": forward_macs(0.3),  # 3,353,148 (4,359,441 at D = 0.5: 0.56 of 7,825,920, section 6's table)
           "7.7": freeze_round}
