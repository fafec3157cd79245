"""Checks of the exercises of the network notebooks (03b, 05, 06); see :mod:`emfl.exercises`."""

from __future__ import annotations

import numpy as np

from emfl.exercises import _call, _choice, _close, _shape_problem, exercise

GIB = 2**30

# --------------------------------------------------------------------------- 03b · The engine


@exercise("3b.1", "what FedAvg sends: the classic LeNet-5")
def _classic_gib(answer):
    from emfl.nn import models

    if isinstance(answer, bool) or not isinstance(answer, (int, float, np.number)):
        return False, f"answer with a number of GiB; you gave {answer!r}."
    d = models.num_parameters(models.make_model("lenet5-classic", (3, 32, 32), 10))
    right = 10 * 2 * 4 * d * 1000 / GIB
    if abs(answer - right) <= 0.005 * right:
        return True, f"right: {d:,} parameters, {right:.2f} GiB, {right / 65.46:.1%} of the paper's LeNet-5."
    for factor, hint in ((0.5, "both ways: the model goes down to each client and comes back up."),
                         (0.1, "10 clients take part in every round."),
                         (GIB / 1e9, "a GiB is 2^30 bytes; you divided by 10^9."),
                         (0.25, "4 bytes a float32 value.")):
        if abs(answer - factor * right) <= 0.005 * right * max(factor, 1):
            return False, hint
    return False, ("count the model's parameters (models.num_parameters), then 10 clients x (down + up) x 4 bytes x "
                   "1,000 rounds, in GiB (2^30 bytes).")


@exercise("3b.2", "predict: how uneven are the shards at alpha = 10?")
def _alpha_ten(answer):
    from emfl.nn.cifar import dirichlet_split

    train_y, test_y = np.repeat(np.arange(10), 5000), np.repeat(np.arange(10), 1000)
    tr, _, _ = dirichlet_split(train_y, test_y, num_shards=100, shard_size=500, alpha=10.0, seed=0)
    top = float(np.mean([np.bincount(train_y[i], minlength=10).max() / 500 for i in tr]))
    options = {"a": 0.15, "b": 0.30, "c": 0.65, "d": 0.90}
    right = min(options, key=lambda k: abs(options[k] - top))
    return _choice(answer, right, "abcd",
                   {"a": "that is alpha = 100 (the right panel): the split is nearly uniform only there.",
                    "c": "that is alpha = 1, the default (the left panel); alpha = 10 is ten times more even-handed.",
                    "d": "that is a small alpha, where most shards hold one class."},
                   f"The largest class holds {top:.0%} of a shard on average at alpha = 10: Dir(alpha p) with "
                   "alpha p = 1 per class draws proportions that are uneven but rarely dominated by one class.")


@exercise("3b.3", "the server's Adam step")
def _adam(adam_step):
    import torch

    from emfl.optim import adam

    gen = torch.Generator().manual_seed(33)
    w = torch.randn(6, generator=gen)
    opt = adam(1e-3)
    state = opt.init(w)
    mine = (w.clone(), torch.zeros(6), torch.zeros(6), 0)
    for step in range(3):
        g = torch.randn(6, generator=gen)
        got = _call(adam_step, mine[0].clone(), g.clone(), mine[1].clone(), mine[2].clone(), mine[3])
        if not isinstance(got, tuple) or len(got) != 4:
            return False, "return (w, m, v, t): the new weights, both moments and the step count."
        delta, state = opt.update(g, state)
        w = w - delta
        gw, gm, gv, gt = got
        if int(gt) != step + 1:
            return False, "t counts the steps taken: 1 after the first."
        if not _close(gm, state[0], rtol=1e-5) or not _close(gv, state[1], rtol=1e-5):
            return False, "the moments: m = b1 m + (1 - b1) g and v = b2 v + (1 - b2) g^2."
        if not _close(gw, w, rtol=1e-5, atol=1e-7):
            plain = mine[0] - 1e-3 * gm / (torch.as_tensor(gv).sqrt() + 1e-8)
            if _close(gw, plain, rtol=1e-5, atol=1e-7):
                return False, "divide the moments by 1 - b1^t and 1 - b2^t (bias correction) before the step."
            return False, "the step is lr m_hat / (sqrt(v_hat) + eps), subtracted from w."
        mine = (torch.as_tensor(gw), torch.as_tensor(gm), torch.as_tensor(gv), int(gt))
    return True, "right: the same three steps as the engine's server optimiser (emfl.optim.adam)."


@exercise("3b.4", "why local accuracy falls late in training")
def _local_falls(answer):
    return _choice(answer, "a", "abc",
                   {"b": "the server's global accuracy keeps rising over the same rounds: Adam is not diverging.",
                    "c": "the shards' test sets are fixed at the split; nothing about them changes."},
                   "Late in training one local epoch fits a shard's 500 images (training loss near 0.01): the "
                   "client's model drifts towards its own training set and generalises less to its own test images.")


@exercise("3b.5", "FedSparse's download with one filter pruned")
def _one_filter(answer):
    import torch

    from emfl.nn.groups import GroupMap
    from emfl.nn.messages import Bundle, GroupSparse, PerGroup
    from emfl.nn.models import make_model, state_vector

    if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)):
        return False, f"answer with a whole number of bytes; you gave {answer!r}."
    model = make_model("lenet5", (3, 32, 32), 10)
    layout = GroupMap(model)
    keep = torch.ones(layout.num_groups)
    a, _ = layout.layer_slices[1]
    keep[a] = 0  # one conv2 filter
    w = state_vector(model)
    right = Bundle(w=GroupSparse(w, keep, layout), v=PerGroup(w[:layout.num_groups], keep),
                   unsent=PerGroup(w[:layout.num_groups], keep)).nbytes
    if int(answer) == right:
        return True, (f"right: {right:,} bytes. The filter takes its own 801 values with it and the 12,800 weights "
                      "of fc1 that read its 25 positions: counted structurally, one filter is 13,601 values.")
    if int(answer) == right + 4 * 12_800:
        return False, "the weights of fc1 that read the pruned filter are dead too: it outputs zeros at all 25 positions."
    if int(answer) == 4 * 878_538:
        return False, "that is the dense model alone; FedSparse sends less of it and some numbers per unit."
    return False, ("values alive x 4 bytes, plus per surviving unit a threshold and an unsent norm (4 bytes each), "
                   "plus one mask bit per unit, rounded up to whole bytes.")
