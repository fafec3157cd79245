"""Checks of the exercises of the network notebooks (03b, 05, 06); see :mod:`emfl.exercises`."""

from __future__ import annotations

import numpy as np

from emfl._exercise_kit import as_count, as_number, as_pair, call_answer, choice, close, exercise

GIB = 2**30

# --------------------------------------------------------------------------- 03b · The engine


@exercise("3b.1", "what FedAvg sends: the classic LeNet-5")
def _classic_gib(answer):
    from emfl.nn import models

    if (problem := _number(answer, "a number of GiB")) is not None:
        return False, problem
    answer = as_number(answer)
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
    return False, ("count the model's parameters (models.num_parameters), then what every round sends: to and from "
                   "each of its clients, at 4 bytes a value; in GiB (2^30 bytes).")


@exercise("3b.2", "predict: how uneven are the shards at alpha = 10?")
def _alpha_ten(answer):
    from emfl.nn.cifar import dirichlet_split

    train_y, test_y = np.repeat(np.arange(10), 5000), np.repeat(np.arange(10), 1000)
    tr, _, _ = dirichlet_split(train_y, test_y, num_shards=100, shard_size=500, alpha=10.0, seed=0)
    top = float(np.mean([np.bincount(train_y[i], minlength=10).max() / 500 for i in tr]))
    options = {"a": 0.15, "b": 0.30, "c": 0.65, "d": 0.90}
    right = min(options, key=lambda k: abs(options[k] - top))
    return choice(answer, right, "abcd",
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
        got = as_pair(call_answer(adam_step, mine[0].clone(), g.clone(), mine[1].clone(), mine[2].clone(), mine[3]), 4)
        if got is None:
            return False, "return (w, m, v, t): the new weights, both moments and the step count."
        delta, state = opt.update(g, state)
        w = w - delta
        gw, gm, gv, gt = got
        if as_count(gt) != step + 1:
            return False, "t counts the steps taken: 1 after the first."
        if not close(gm, state[0], rtol=1e-5) or not close(gv, state[1], rtol=1e-5):
            return False, ("the moments are off: m and v are exponential moving averages, of g and of g^2, with "
                           "weights b1 and b2 on the old values.")
        if not close(gw, w, rtol=1e-5, atol=1e-7):
            gm_t, gv_t = (torch.as_tensor(np.asarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x
                          for x in (gm, gv))
            plain = mine[0] - 1e-3 * gm_t / (gv_t.sqrt() + 1e-8)
            if close(gw, plain, rtol=1e-5, atol=1e-7):
                return False, ("the moments start at 0, so early on they are too small: Adam's bias correction "
                               "undoes that before the step.")
            return False, "the moments are right but the new w is not: check the step's sign, lr and where eps goes."
        mine = tuple(torch.as_tensor(np.asarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x
                     for x in (gw, gm, gv)) + (as_count(gt),)
    return True, "right: the same three steps as the engine's server optimiser (emfl.optim.adam)."


@exercise("3b.4", "why local accuracy falls late in training")
def _local_falls(answer):
    return choice(answer, "c", "abc",
                   {"a": "the server's global accuracy keeps rising over the same rounds: Adam is not diverging.",
                    "b": "the shards' test sets are fixed at the split; nothing about them changes."},
                   "Late in training one local epoch fits a shard's 500 images (training loss near 0.01): the "
                   "client's model drifts towards its own training set and generalises less to its own test images.")


@exercise("3b.5", "how many FedAvg rounds a budget buys")
def _rounds_within(rounds_within):
    import math

    from torch import nn

    from emfl.nn import models

    # (GiB, model, clients a round): FEMNIST's LeNet-5 on the CIFAR-10 run's 65.46 GiB, then models the
    # notebook never counts; no count is a whole number, so rounding shows
    cases = ((65.46, models.make_model("lenet5", (1, 28, 28), 62), 10),
             (1.0, models.make_model("lenet5-classic", (3, 32, 32), 10), 7),
             (0.01, nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)), 3))
    got, exact, ratio = [], [], []
    for budget, model, clients in cases:
        out = call_answer(rounds_within, budget, model, clients)
        d = sum(p.numel() for p in model.parameters())
        weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
        exact.append((budget * GIB / (2 * 4 * d * clients), clients, d / weights))  # down and up, 4 B a value
        if as_count(out) is None:
            x = as_number(out)
            if x is not None and abs(x - exact[-1][0]) <= 1e-6 * exact[-1][0]:
                return False, "count whole rounds: the rounds that fit in the budget, rounded down."
            return False, f"return a whole number of rounds; got {out!r}."
        got.append(as_count(out))
    if got == [math.floor(x) for x, _, _ in exact]:
        return True, ("right: budget / (2 x 4 B x d x clients), rounded down. 65.46 GiB, what 1,000 CIFAR-10 rounds of "
                      f"FedAvg send, buy {got[0]:,} FEMNIST rounds with 10 writers each: the FEMNIST LeNet-5 is the "
                      "smaller model (its fc1 reads 4 x 4 positions of conv2, not 5 x 5).")
    for wrong, hint in ((lambda x, c, r: round(x), "whole rounds that fit in the budget: round down."),
                        (lambda x, c, r: math.ceil(x), "whole rounds that fit in the budget: round down."),
                        (lambda x, c, r: math.floor(2 * x), "both ways: every client receives the model and sends it back."),
                        (lambda x, c, r: math.floor(c * x), "every client of the round receives the model and sends it back."),
                        (lambda x, c, r: math.floor(4 * x), "4 bytes a float32 value."),
                        (lambda x, c, r: math.floor(x * 1e9 / GIB), "a GiB is 2^30 bytes, not 10^9."),
                        (lambda x, c, r: math.floor(x * r), "the biases are sent too: count every value of model.parameters().")):
        if got == [wrong(*e) for e in exact]:
            return False, hint
    return False, ("count the model's values (every tensor of model.parameters()), then the bytes of one round: "
                   "down and up, 4 bytes a value, for every client; then the whole rounds the budget holds.")


@exercise("3b.6", "predict: the server's learning rate ten times larger")
def _server_lr(answer, runs, source=""):
    if "generated" in str(source):
        return False, ("this prediction is checked against CIFAR-10, and the run found no data (it trained on "
                       "generated images): set EMFL_DATA_DIR to the folder that holds CIFAR-10 and run it again.")
    try:
        base, big = float(runs[1e-3]["global_acc"]), float(runs[1e-2]["global_acc"])
    except (KeyError, TypeError, ValueError):
        return False, "run the exercise's cell first: it trains both settings and passes lr_runs to this check."
    gap = 100 * (big - base)
    right = "a" if gap > 2 else "c" if gap < -2 else "b"
    return choice(answer, right, "abc",
                   {"a": "Adam's step does not grow with the distance to the clients' models: its first step is "
                         "lr m_hat / sqrt(v_hat) = +-lr on every weight (exercise 3b.3), wanted or not.",
                    "b": "dividing by sqrt(v_hat) makes the step about lr whatever the gradient's size: ten times the "
                         "learning rate moves every weight ten times further.",
                    "c": "compare the two global accuracies your run printed with the 2-point band of each option."},
                   f"Your run: {100 * base:.1f}% global accuracy after 3 rounds at lr 1e-3, {100 * big:.1f}% at 1e-2. "
                   "Adam's first steps move every weight by about lr whatever the clients' difference says; at 1e-2 "
                   "that is the size of many of LeNet-5's initial weights (fc1's lie within +-1/sqrt(1600) = 0.025), "
                   "and the model is knocked towards chance.")


# --------------------------------------------------------------------------- 05 · FedSparse on CIFAR-10


def _number(answer, what: str):
    if as_number(answer) is None:
        return f"answer with {what}; you gave {answer!r}."
    return None


@exercise("5.1", "when FedL1 first prunes a unit")
def _fedl1_first(answer, runs):
    answer = as_count(answer)
    if answer is None:
        return False, "answer with a round number, a whole number."
    recs = runs["FedL1"]["records"]
    right = next((r["round"] for r in recs if r.get("sparsity", 0) > 0), None)
    if right is None:
        return False, "this FedL1 history never prunes anything; run the notebook on the committed results."
    if int(answer) == right:
        return True, f"right: FedL1's first pruned unit shows at round {right}, sparsity {100 * [r for r in recs if r['round'] == right][0]['sparsity']:.1f}%."
    if int(answer) < right:
        return False, "at that round the record still says sparsity 0.0: look for the first record whose sparsity is above 0."
    if int(answer) == recs[-1]["round"]:
        return False, "that is the run's last round; the first round with sparsity above 0 comes much earlier."
    return False, "later than the first: the records come every 10 rounds; find the first whose sparsity is above 0."


@exercise("5.2", "why FedL1 prunes nothing for a hundred rounds")
def _fedl1_why(answer):
    return choice(answer, "c", "abc",
                   {"a": "the client's loss adds lam sum_g ||phi_sg|| to every batch (Eq. 24), from round 1.",
                    "b": "the server averages differences, it does not add to the norms; and the norms do fall "
                         "steadily (look at the sparsity after round 100)."},
                   "A unit is switched off only once its whole norm is at most lam = 2e-3, far below the norms at "
                   "initialisation, and the penalty pulls each norm down by a small amount a round against the data's "
                   "gradient: the first norms get there after about a hundred rounds, and more follow for hundreds more.")


@exercise("5.3", "FedSparse's download from its sparsity")
def _download_from_sparsity(answer, runs):
    if (problem := _number(answer, "a number of bytes")) is not None:
        return False, problem
    answer = as_number(answer)
    doc = runs["FedSparse mid"]
    a, b = doc["records"][-2], doc["records"][-1]
    right = (b["bytes_down"] - a["bytes_down"]) / (b["round"] - a["round"])  # what a round sent, measured
    d = doc["model_parameters"]
    if abs(answer - right) <= 0.005 * right:
        return True, (f"right: {right:,.0f} bytes a round were measured; the values alive explain all but "
                      f"{100 * (right - 40 * (1 - b['sparsity']) * d) / right:.1f}% of it, a threshold, a norm and a "
                      "bit per unit.")
    own = 40 * (1 - b["sparsity_own"]) * d
    for wrong, hint in ((right / 10, "10 clients receive the model every round."),
                        (right / 4, "4 bytes a float32 value."),
                        (right / 2**30, "the question asks for bytes, not GiB."),
                        (own, "use the structural sparsity ('sparsity'), not the pruned units' own groups: a pruned "
                              "unit also takes the weights that read it."),
                        (40 * b["sparsity"] * d, "the sparsity is the share pruned; what is sent is the rest.")):
        if abs(answer - wrong) <= 0.01 * abs(wrong):
            return False, hint
    return False, "what is alive of the model, at 4 bytes a value, to each of the round's clients."


@exercise("5.4", "is FedSparse's accuracy gap larger than the seed spread?")
def _seed_gap(answer, seeds, rnd=200):
    from emfl.nn.history import seed_spread

    if (problem := _number(answer, "a number of percentage points")) is not None:
        return False, problem
    answer = as_number(answer)
    a = seed_spread(seeds["FedAvg"], rnd)
    s = seed_spread(seeds["FedSparse mid"], rnd)
    right = 100 * (a["mean"] - s["mean"])
    if abs(answer - right) <= 0.05:
        wide = 100 * max(a["max"] - a["min"], s["max"] - s["min"])
        return True, (f"right: {right:.2f} points, against seed ranges of at most {wide:.2f} points: "
                      + ("the gap is larger than the seeds' spread." if right > wide else
                         "the gap is within the seeds' spread."))
    if abs(answer + right) <= 0.05:
        return False, "FedAvg's mean minus FedSparse mid's: the gap is positive when FedAvg is ahead."
    if abs(answer - right / 100) <= 0.0005:
        return False, "in percentage points: the records hold fractions, multiply by 100."
    return False, f"the mean global accuracy at round {rnd} over the seeds, FedAvg's minus FedSparse mid's."


@exercise("5.5", "predict FedDrop's communication")
def _feddrop_share(answer, runs):
    share = runs["FedDrop"]["records"][-1]["cum_gib"] / runs["FedAvg"]["records"][-1]["cum_gib"]
    options = {"a": 0.3, "b": 0.5, "c": 0.7, "d": 0.9}
    right = min(options, key=lambda k: abs(options[k] - share))
    return choice(answer, right, "abcd",
                   {"d": "0.9 is the share of conv filters kept; most of the model is fc1, which loses more.",
                    "c": "count fc1, which holds most of the parameters: it keeps half its units, and each reads only "
                         "the kept conv2 filters.",
                    "b": "close; count fc1, most of the model: half its units, each reading 90% of its inputs.",
                    "a": "a dropped unit takes its weights with it, but half the fc units and 90% of the filters "
                         "stay."},
                   f"The measured share is {share:.2f}: fc1 holds most of the model and keeps half its units, each "
                   "reading only the kept conv2 filters' outputs (0.5 x 0.9 = 0.45 of fc1).")


@exercise("5.6", "FedSparse's download with one filter pruned")
def _one_filter(answer):
    import torch

    from emfl.nn.groups import GroupMap
    from emfl.nn.messages import Bundle, GroupSparse, PerGroup
    from emfl.nn.models import make_model
    from emfl.nn.state import state_vector

    answer = as_count(answer)
    if answer is None:
        return False, "answer with a whole number of bytes."
    model = make_model("lenet5", (3, 32, 32), 10)
    group_map = GroupMap(model)
    keep = torch.ones(group_map.num_groups)
    a, _ = group_map.layer_slices[1]
    keep[a] = 0  # one conv2 filter
    w = state_vector(model)
    right = Bundle(w=GroupSparse(w, keep, group_map), v=PerGroup(w[:group_map.num_groups], keep),
                   unsent=PerGroup(w[:group_map.num_groups], keep)).nbytes
    if int(answer) == right:
        return True, (f"right: {right:,} bytes. The filter takes its own 801 values with it and the 12,800 weights "
                      "of fc1 that read its 25 positions: counted structurally, one filter is 13,601 values.")
    if int(answer) == right + 4 * 12_800:
        return False, "the weights of fc1 that read the pruned filter are dead too: it outputs zeros at all 25 positions."
    if int(answer) == 4 * 878_538:
        return False, "that is the dense model alone; FedSparse sends less of it and some numbers per unit."
    return False, ("count what the download holds: the values still alive, what each surviving unit carries "
                   "besides its values, and the mask, in whole bytes.")


@exercise("5.7", "what FedSparse mid pruned at round 770")
def _step_770(answer, runs, rnd=770):
    from emfl.nn.groups import GroupMap
    from emfl.nn.models import make_model

    pair = as_pair(answer)
    if pair is None or not isinstance(pair[0], str):
        return False, 'answer with a pair: a layer\'s name and a whole number, e.g. ("fc1", 100).'
    name, count = pair[0].strip().lower(), as_count(pair[1])
    layers = {layer.name: layer for layer in GroupMap(make_model("lenet5", (3, 32, 32), 10)).layers}
    if name not in layers:
        return False, f"name one of the gated layers: {', '.join(layers)}."
    if count is None:
        return False, "the second part counts units: a whole number."
    doc = runs["FedSparse mid"]
    d, recs = doc["model_parameters"], doc["records"]
    k = next(i for i, r in enumerate(recs) if r["round"] == rnd)
    own = round((recs[k]["sparsity_own"] - recs[k - 1]["sparsity_own"]) * d)  # the pruned unit's own group
    step = round((recs[k]["sparsity"] - recs[k - 1]["sparsity"]) * d)  # and every weight that read it
    [layer] = [l for l in layers.values() if l.values_per_group == own]  # one unit: its layer by its group's size
    per_reader = layer.values_read // layer.reader.weight.shape[0]  # the weights through which one reader reads it
    readers, total = (step - own) // per_reader, layer.reader.weight.shape[0]
    if name == layer.name and count == readers:
        return True, (f"right: one {layer.name} unit, {own} values of its own, read by {readers} of the {total} units "
                      f"of the next layer through {per_reader} weights each: {own} + {readers} x {per_reader} = {step:,} "
                      "values, the structural step. A pruned unit's readers that are already pruned count once.")
    if name != layer.name:
        return False, ("compare the step in sparsity_own, in values (times the model's size), with one unit's own "
                       "group in each layer: its weights and its bias.")
    if count == total:
        return False, "not every unit of the next layer was alive: only the alive ones lose the weights that read it."
    if count == total - readers:
        return False, "that counts the next layer's pruned units; the question asks for the ones alive."
    if count == round(step / per_reader):
        return False, ("the structural step also holds the pruned unit's own group: the weights that read it are the "
                       "difference of the two steps.")
    return False, ("the structural step beyond the unit's own group is what the alive units of the next layer stop "
                   "reading: divide it by the weights through which one of them reads one unit.")


def _slope_root(theta: float, size: int) -> float:
    """The lam0 at which the regulariser's slope c_g (per example) changes sign, by bisection."""
    import torch

    from emfl.nn.algorithms.fedsparse import regulariser_slope

    def slope(lam0):
        return float(regulariser_slope(torch.tensor([theta]), torch.tensor([float(size)]), lam0, n_s=500))

    lo, hi = 0.0, 1.0  # negative at 0 (the prior keeps the gate), positive at 1
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


@exercise("5.8", "the lam0 above which a conv2 filter is pushed off at the start")
def _switch_at_start(answer):
    from emfl.nn.groups import GroupMap
    from emfl.nn.models import make_model

    if (problem := _number(answer, "a value of lam0")) is not None:
        return False, problem
    answer = as_number(answer)
    sizes = {l.name: l.values_per_group for l in GroupMap(make_model("lenet5", (3, 32, 32), 10)).layers}
    right = _slope_root(0.99, sizes["conv2"])  # theta0 = 0.99: every gate at the start
    if abs(answer - right) <= 0.001 * right:  # |g| without its bias is 0.125% off
        others = ", ".join(f"{k} (|g| = {v:,}) {_slope_root(0.99, v):.3g}" for k, v in sizes.items() if k != "conv2")
        return True, (f"right: lam0* = {right:.3g} for a conv2 filter. The paper's low level (5e-7) lies below it, mid "
                      f"and high above. The other layers: {others}: at the same lam0 the large groups are pushed "
                      "first, and at mid conv1's prior still wins.")
    if answer <= 0:
        return False, "c_g turns positive when the L0 cost lam0 |g| outweighs the prior's pull: lam0* is positive."
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    for wrong, hint in ((right * 801 / 800, "a group's size |g| counts its bias too."),
                        (right * logit(1 - 1e-7) / logit(0.99), "at the start theta is theta0 = 0.99, not saturated."),
                        (right / 500, "N_s divides both terms of c_g: where c_g changes sign does not depend on it."),
                        (right * 801 / 76, "that is a conv1 filter's size; a conv2 filter reads 32 channels x 5 x 5."),
                        (right * 801 / 1601, "that is an fc1 unit's size; a conv2 filter reads 32 channels x 5 x 5."),
                        (right * 801 / 13_601, "lam0 charges a group's own values; the fc1 weights that read the "
                                               "filter belong to fc1's groups.")):
        if abs(answer - wrong) <= 0.002 * wrong:
            return False, hint
    return False, "where does the regulariser's slope c_g of a conv2 filter change sign, at theta = 0.99?"


@exercise("5b.1", "predict: which reading keeps conv1 without an L0 cost?")
def _keeps_conv1(answer, screen, rnd=30):
    from emfl.nn.history import ablation_rows

    options = {"a": "lam0 = 0, inputs = unit", "b": "lam0 = 0, v_opt = adam", "c": "lam0 = 0, v_grad = pi",
               "d": "lam0 = 0, theta_space = logit"}
    rows = {r["reading"]: r for r in ablation_rows(screen, None, rnd)}
    kept = {k: rows[v]["alive"]["conv1"] for k, v in options.items()}
    right = max(kept, key=kept.get)
    return choice(answer, right, "abcd",
                   {"c": "pi_s is nearly 0 or 1 at the end of a round (T = 1e-3): it tells the server what z_s tells it.",
                    "d": "saturation matters only far from the threshold; a gate that flips is near it.",
                    "b": "Adam, like Adamax, steps by the sign of a lone gradient, and takes larger steps on rare ones.",
                    "a": "standardised inputs are the paper's silence, and they move conv1's norms most."},
                   f"conv1 keeps {kept[right]:.0f} of 32 filters with inputs in [0, 1], against "
                   f"{min(kept.values()):.0f}-{sorted(kept.values())[-2]:.0f} otherwise. "
                   + _not_the_size(rows) +
                   "A filter whose norm falls by more than the margin T logit(0.99) = 0.0046 in a round ends it "
                   "below its threshold, and its client uploads z = 0.")


def _not_the_size(rows):
    """What the screening run with pixels in [-1, 1] adds to exercise 5b.1's answer, if it is there."""
    centered = rows.get("lam0 = 0, inputs = centered")
    if centered is None:
        return ""
    return (f"It is not the inputs' size: pixels in [-1, 1] have a smaller mean square than pixels in [0, 1] "
            f"(0.25 against 0.29 on CIFAR-10; standardised ones 1) and conv1 keeps {centered['alive']['conv1']:.0f}. "
            "What [0, 1] adds is a common offset (a mean of 0.47), which the other two take away. ")


@exercise("5b.2", "the lam0 at which a saturated layer switches")
def _switch_over(answer):
    import torch

    from emfl.nn.algorithms.fedsparse import regulariser_slope

    if (problem := _number(answer, "a value of lam0")) is not None:
        return False, problem
    answer = as_number(answer)
    theta = torch.tensor([1.0])  # a saturated gate, as float32 stores it
    size = torch.tensor([3.0 * 5 * 5 + 1])  # a conv1 filter: its weights and its bias

    def slope(lam0):
        return float(regulariser_slope(theta, size, lam0, n_s=500))

    lo, hi = 0.0, 1.0  # the slope is negative at 0 (the prior keeps the gate) and positive at 1: bisect
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    right = (lo + hi) / 2
    if abs(answer - right) <= 0.002 * right:
        return True, (f"right: lam0* = {right:.3g}. Below it the prior's pull keeps a saturated conv1 gate on, above it "
                      "Adamax walks the threshold up at full speed: a switch, whatever the data say, and it does not "
                      "depend on N_s (it divides both terms).")
    for wrong, hint in ((right * 76 / 75, "a group's size |g| counts its bias too: 3 x 5 x 5 weights + 1."),
                        (right * 4.59512 / 15.9424, "the gate is saturated: theta is 1.0 in float32, which the slope "
                                                     "clamps to 1 - 1e-7 before its logit (not theta0 = 0.99)."),
                        (right / 500, "N_s divides both terms of c_g: where c_g changes sign does not depend on it."),
                        (right * 76 / 801, "that is a conv2 filter's size; a conv1 filter reads 3 channels x 5 x 5.")):
        if abs(answer - wrong) <= 0.002 * wrong:
            return False, hint
    return False, "where does the regulariser's slope c_g change sign, for a conv1 filter whose theta is saturated?"


@exercise("5b.3", "the server's tug of war: how many kept gates cancel one dropped gate")
def _tug_of_war(balance):
    import torch

    from emfl.nn import gates

    rng = np.random.default_rng(53)
    # theta as the server holds it (float32): generic values, values near 1, and two that round to 1.0
    cases = [np.array([0.8731, 0.9618, 0.99]), rng.uniform(0.5, 0.999, size=5),
             np.array([0.99993, 1 - 1e-9, 1 - 3e-10])]
    for theta64 in cases:
        theta = torch.tensor(theta64, dtype=torch.float32)
        v = torch.zeros_like(theta)  # sigmoid(v) / T multiplies both contributions alike
        kept = gates.server_v_gradient(torch.ones_like(theta), theta, v)  # one client with z = 1
        dropped = gates.server_v_gradient(torch.zeros_like(theta), theta, v)  # one with z = 0
        with np.errstate(divide="ignore"):
            right = -dropped.double().numpy() / kept.double().numpy()  # inf where a z = 1 weighs exactly 0
        got = call_answer(balance, theta.clone())
        got = np.asarray(got.detach().numpy() if hasattr(got, "detach") else got, dtype=np.float64).reshape(-1)
        if got.shape != right.shape:
            return False, f"return one count per gate, {right.size} here; yours has {got.size}."
        finite = np.isfinite(right)
        if np.all(np.isinf(got[~finite])) and close(got[finite], right[finite], rtol=1e-4):
            continue
        t = theta64
        with np.errstate(divide="ignore", invalid="ignore"):
            if close(got[finite], ((1 - t) / t)[finite], rtol=1e-4):
                return False, ("that is how many dropped gates cancel one kept gate. A client with z = 1 "
                               "contributes (1 - theta), one with z = 0 contributes theta.")
            if close(got[finite], (1 / (1 - t))[finite], rtol=1e-4):
                return False, "count the clients with z = 1 that cancel one with z = 0: n (1 - theta) = theta, solved for n."
            if not np.all(np.isinf(got[~finite])) and np.all(np.isfinite(got)) and close(got[finite], right[finite], rtol=1e-4):
                return False, ("right wherever theta is below 1 in float32, but where the server's float32 theta is "
                               "exactly 1.0 its 1 - theta is 0: a kept gate then pulls with exactly nothing. Compute "
                               "with theta as the server holds it, unclamped (the clamp to 1 - 1e-7 belongs to the "
                               "clients' slope, not to the server's gradient).")
        return False, ("set one client's threshold gradient with z = 0 against n clients' with z = 1 "
                       "(gates.server_v_gradient) and solve for n.")
    return True, ("right: theta / (1 - theta) kept gates cancel one dropped gate: 99 at theta = 0.99, and none "
                  "can once theta is 1.0 in float32. From then on a single z = 0 moves the threshold up and no "
                  "number of z = 1 uploads can move it back: the ratchet of section 2.")


@exercise("5b.4", "the initial gate probability that buys a margin")
def _theta0_for(theta0_for):
    T = 1e-3
    rng = np.random.default_rng(54)
    margins = [0.0071, *rng.uniform(0.001, 0.015, size=4)]
    for margin in margins:
        got = as_number(call_answer(theta0_for, float(margin)))
        if got is None:
            return False, "return one number: theta0 for the given margin."
        right = 1 / (1 + np.exp(-margin / T))
        if abs(got - right) <= 1e-6 * (1 - right) + 1e-12:  # judged on 1 - theta0, where the answer lives
            continue
        if abs(got - 1 / (1 + np.exp(-margin))) < 1e-9:
            return False, "theta = sigmoid((||w|| - tau) / T): divide the margin by the temperature T = 1e-3."
        if abs(got - np.log(margin / T)) < 1e-9 or abs(got - np.log(margin / (1 - margin))) < 1e-9:
            return False, "that is a logit; theta0 is the sigmoid of the scaled margin, the inverse of the logit."
        if abs(got - (1 - np.exp(-margin / T))) < 1e-9:
            return False, "close at large margins, but sigmoid(x) = 1 / (1 + exp(-x)), not 1 - exp(-x)."
        return False, ("at round 0 the threshold is set so that theta = theta0: ||w_g|| - tau_g = T logit(theta0). "
                       "Solve for theta0.")
    return True, ("right: theta0 = sigmoid(margin / T). A margin of 0.02, what a conv1 norm can move in a round, "
                  "needs theta0 = sigmoid(20): 1 - 2e-9, which float32 stores as exactly 1.0 (exercise 5b.3 says "
                  "what that does to the server).")


# --------------------------------------------------------------------------- 06 · FedSparse on FEMNIST


@exercise("6.1", "FedAvg's communication over the paper's 6,000 rounds, with the classic LeNet-5")
def _fedavg_6000(answer):
    from emfl.nn import models

    if (problem := _number(answer, "a number of GiB")) is not None:
        return False, problem
    answer = as_number(answer)
    d = models.num_parameters(models.make_model("lenet5-classic", (1, 28, 28), 62))
    paper = models.num_parameters(models.make_model("lenet5", (1, 28, 28), 62))
    right = 2 * 10 * 4 * d * 6000 / GIB
    if abs(answer - right) <= 0.005 * right:
        return True, (f"right: {d:,} parameters, {right:.2f} GiB, {d / paper:.1%} of the paper's model's: exact, since "
                      "FedAvg sends the same every round.")
    if abs(answer - right * paper / d) <= 0.005 * right * paper / d:
        return False, "that is the paper's LeNet-5 (notebook 03b); this exercise asks for the classic one of exercise 3b.1."
    for factor, hint in ((0.5, "both ways: down to each client and back up."),
                         (0.1, "10 writers take part in every round."),
                         (2000 / 6000, "the paper's schedule is 6,000 rounds; the runs here stop at 2,000."),
                         (GIB / 1e9, "a GiB is 2^30 bytes; you divided by 10^9."),
                         (0.25, "4 bytes a float32 value.")):
        if abs(answer - factor * right) <= 0.005 * right * max(factor, 1):
            return False, hint
    return False, "count the model's parameters, then what a round sends to and from its writers, at 4 bytes a value, in GiB."


@exercise("6.2", "extrapolate a run's communication")
def _extrapolate(extrapolate):
    mib = 2**20

    def doc(rates):  # 100 rounds a record; rates[k] MiB a round in the k-th interval
        recs, total = [], 0.0
        for k, rate in enumerate(rates):
            total += 100 * rate * mib
            recs.append({"round": 100 * (k + 1), "bytes_down": total / 2, "bytes_up": total / 2,
                         "cum_gib": total / 2**30, "global_acc": 0.5, "local_acc": 0.5})
        return {"config": {"algo": "fedsparse", "rounds": 100 * len(rates)}, "records": recs}

    # (MiB a round in each 100-round interval, the round to extrapolate to); the rate falls, then settles
    for rates, rnd in (([9.0, 7.0, 6.0, 5.0], 1000), ([4.0, 4.0], 600), ([3.0, 8.0, 2.0], 450)):
        case = doc(rates)
        got = call_answer(extrapolate, case, rnd)
        if as_number(got) is None:
            return False, f"return one number of GiB; got {got!r}."
        last, left = 100 * len(rates), rnd - 100 * len(rates)
        total = 100 * sum(rates)  # MiB
        right = (total + left * rates[-1]) / 1024
        if close(got, right):
            continue
        if close(got, total / last * rnd / 1024):
            return False, ("that is the mean rate since round 0, which counts the early rounds before the sparsity "
                           "settled; use the rate of the last interval.")
        if close(got, total / 1024 + left * rates[-1] * mib / 1e9):
            return False, "the answer is in GiB (2^30 bytes), the unit of cum_gib."
        if close(got, total / 1024):
            return False, "that is the total so far: add what the rounds still to come will send."
        return False, "carry the rate of the last interval between two records on to round rnd, and answer in GiB."
    return True, "right: the last total plus the last interval's rate for every round still to come."


@exercise("6.3", "why local accuracy overtakes global accuracy")
def _local_overtakes(answer):
    return choice(answer, "b", "abc",
                   {"a": "each writer's test images are fixed by LEAF's 90/10 split; they never change.",
                    "c": "the global test images are the union of the writers' test images, the same throughout."},
                   "Local accuracy averages each writer's last communicated model: after 300 rounds many of those "
                   "models are from early, weak rounds, while by round 2,000 nearly every writer has been visited "
                   "several times and its last model, fine-tuned on its own handwriting, beats the global one.")


@exercise("6.4", "how many writers 2,000 rounds reach")
def _writers_reached(answer, writers=3597, rounds=2000, per_round=10):
    if (problem := _number(answer, "a number of writers")) is not None:
        return False, problem
    answer = as_number(answer)
    right = writers * (1 - (1 - per_round / writers) ** rounds)  # each writer is left out of a round w.p. 1 - 10/N
    if abs(answer - right) <= 5:
        return True, (f"right: about {right:.0f} of {writers:,}; a writer is missed by all {rounds:,} rounds with "
                      f"probability (1 - {per_round}/{writers})^{rounds} = {(1 - per_round / writers) ** rounds:.4f}.")
    if abs(answer - rounds * per_round) <= 5:
        return False, "that counts visits; a writer can be visited many times."
    if abs(answer - writers) <= 1:
        return False, "not quite all: how likely is one writer to be missed by every round?"
    return False, "the expected count: N x (1 - P(a writer is in none of the rounds)); a round takes 10 of N."


@exercise("6.5", "what fixes the sparsity after 100 rounds")
def _frozen_gates(answer):
    return choice(answer, "c", "abc",
                   {"a": "the server sends its thresholds with the surviving units every round.",
                    "b": "lam0 is constant through the run; nothing anneals it."},
                   "With T = 1e-3 a kept unit's theta_g is exactly 1 in float32 once its norm is T 24 ln 2 = 0.0166 "
                   "above its threshold, and exactly 0 once its norm is 0.0887 below it (a pruned unit's norm is 0): "
                   "no gradient reaches those thresholds through theta_g, the clients' gates are the server's, "
                   "|pi_s - theta| is exactly 0, and the architecture stays as the first rounds left it.")


def _units_alive_from_bytes(doc):
    """The units alive in a FedSparse server model, from its last record's download and sparsity: a
    client receives 4 B for each value alive, 4 B for each surviving unit's threshold and 4 B for its
    unsent norm, and one mask bit per unit."""
    from emfl.nn.groups import GroupMap
    from emfl.nn.models import make_model

    shape, classes = {"femnist": ((1, 28, 28), 62), "cifar10": ((3, 32, 32), 10)}[doc["config"]["task"]]
    group_map = GroupMap(make_model("lenet5", shape, classes))
    a, b = doc["records"][-2], doc["records"][-1]
    down = (b["bytes_down"] - a["bytes_down"]) / (b["round"] - a["round"]) / doc["config"]["clients_per_round"]
    values = round((1 - b["sparsity"]) * group_map.d)
    units = (down - 4 * values - (group_map.num_groups + 7) // 8) / 8
    return group_map, round(units), abs(units - round(units)) < 1e-6


def _sparse_doc(phases, clients, every, values=400_000):
    """A FEMNIST FedSparse history whose gates equal the server's: (rounds, units alive) per phase."""
    recs, down, up, rnd = [], 0, 0, 0
    for rounds, units in phases:
        for _ in range(rounds // every):
            rnd += every
            down += every * clients * (4 * values + 8 * units + 76)
            up += every * clients * (4 * values + 76)
            recs.append({"round": rnd, "bytes_down": down, "bytes_up": up, "cum_gib": (down + up) / GIB,
                         "sparsity": 1 - values / 608_702, "tv_max": 0.0})
    return {"config": {"task": "femnist", "clients_per_round": clients}, "model_parameters": 608_702, "records": recs}


@exercise("6.6", "the units alive, read from the bytes")
def _units_from_bytes(units_alive, runs):
    # the committed FedSparse runs whose last records have every client's gates equal to the server's,
    # then histories the notebook does not hold: other clients a round, records every 25 rounds
    cases = [doc for name, doc in runs.items() if name.startswith("FedSparse") and doc["records"][-1].get("tv_max") == 0]
    cases += [_sparse_doc([(100, 560), (300, 333)], clients=7, every=25),
              _sparse_doc([(50, 600), (150, 129)], clients=20, every=50, values=50_000)]
    for doc in cases:
        got = call_answer(units_alive, doc)
        if as_number(got) is None:
            return False, f"return one number of units; got {got!r}."
        got = as_number(got)
        group_map, right, exact = _units_alive_from_bytes(doc)
        assert exact, "a history whose download is not values, two numbers per unit and the mask"
        if got == right:
            continue
        a, b = doc["records"][-2], doc["records"][-1]
        rounds, clients = b["round"] - a["round"], doc["config"]["clients_per_round"]
        since_start = (b["bytes_down"] - b["bytes_up"]) / b["round"] / clients / 8
        for wrong, hint in ((clients * right, "every client of the round receives its own copy: divide by the clients."),
                            (2 * right, "each surviving unit comes with two numbers of 4 bytes: its threshold and its "
                                        "unsent norm."),
                            (rounds * right, "the records hold running totals: divide by the rounds between the two."),
                            (group_map.num_groups - right, "that counts the units pruned; the question asks for those alive."),
                            (since_start, "that is the mean since round 0, over rounds that had other units alive: "
                                          "take the last interval between two records.")):
            if abs(got - wrong) <= 1e-6 * abs(wrong):
                return False, hint
        return False, ("take one round's download minus its upload, per client: what is sent down and not up is the "
                       "few numbers each surviving unit carries.")
    return True, ("right: down minus up, per round and client, is 8 bytes a surviving unit (its threshold and its "
                  "unsent norm), since the clients' gates are the server's. The schedule's histories do not record the "
                  "units alive; their bytes do.")


def _triple(answer):
    if isinstance(answer, np.ndarray) or hasattr(answer, "detach"):
        if np.ndim(answer) == 1 and len(answer) == 3:
            return tuple(answer[i] for i in range(3))
    return as_pair(answer, 3)


@exercise("6.7", "which layers FedSparse mid pruned on FEMNIST")
def _pruned_per_layer(answer, runs):
    import torch

    got = _triple(answer)
    counts = None if got is None else [as_count(x) for x in got]
    if counts is None or None in counts:
        return False, "answer with three whole numbers: the units pruned in conv1, conv2 and fc1."
    doc = runs["FedSparse mid"]
    group_map, alive, _ = _units_alive_from_bytes(doc)
    rec, d = doc["records"][-1], group_map.d
    pruned, own, step = group_map.num_groups - alive, round(rec["sparsity_own"] * d), round(rec["sparsity"] * d)
    units = [b - a for a, b in group_map.layer_slices]
    sizes = [layer.values_per_group for layer in group_map.layers]

    def structural(n):  # the values pruned with n[k] units off in layer k, readers included
        keep = torch.ones(group_map.num_groups)
        for (a, _), k in zip(group_map.layer_slices, n):
            keep[a:a + k] = 0
        return round(group_map.sparsity(keep)["sparsity"] * d)

    fits = [(i, j, pruned - i - j) for i in range(units[0] + 1) for j in range(units[1] + 1)
            if 0 <= pruned - i - j <= units[2] and np.dot(sizes, (i, j, pruned - i - j)) == own]
    fits = [n for n in fits if structural(n) == step]
    assert len(fits) == 1, fits
    if tuple(counts) == fits[0]:
        c1, c2, f1 = fits[0]
        return True, (f"right: {c1} conv1 filter{'s' * (c1 != 1)}, {c2} conv2 filter{'s' * (c2 != 1)} and {f1} fc1 "
                      f"unit{'s' * (f1 != 1)} pruned, {alive} of {group_map.num_groups} units alive. Their own groups are {own:,} values, the "
                      f"weights that read them {step - own:,} more: {step:,}, the record's structural sparsity.")
    if tuple(counts) == tuple(u - n for u, n in zip(units, fits[0])):
        return False, "the question asks for the units pruned in each layer, not those alive."
    if sum(counts) != pruned:
        return False, ("the three counts must add up to the units pruned: the units of the three layers less those "
                       "alive (exercise 6.6).")
    # the sum is right, so the own groups are not (sum and sparsity_own fix the three counts)
    return False, ("the pruned units' own groups must make up sparsity_own of the model: a unit owns its weights "
                   "and its bias (a conv1 filter 1 x 5 x 5 + 1 values, a conv2 filter 32 x 5 x 5 + 1, an fc1 unit "
                   "1,024 + 1).")
