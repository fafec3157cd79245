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
    return choice(answer, "a", "abc",
                   {"b": "the server's global accuracy keeps rising over the same rounds: Adam is not diverging.",
                    "c": "the shards' test sets are fixed at the split; nothing about them changes."},
                   "Late in training one local epoch fits a shard's 500 images (training loss near 0.01): the "
                   "client's model drifts towards its own training set and generalises less to its own test images.")


@exercise("3b.5", "FedSparse's download with one filter pruned")
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
    return choice(answer, "b", "abc",
                   {"a": "the client's loss adds lam sum_g ||phi_sg|| to every batch (Eq. 24), from round 1.",
                    "c": "the server averages differences, it does not add to the norms; and the norms do fall "
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
    options = {"a": 0.9, "b": 0.7, "c": 0.5, "d": 0.3}
    right = min(options, key=lambda k: abs(options[k] - share))
    return choice(answer, right, "abcd",
                   {"a": "0.9 is the share of conv filters kept; most of the model is fc1, which loses more.",
                    "b": "count fc1, which holds most of the parameters: it keeps half its units, and each reads only "
                         "the kept conv2 filters.",
                    "c": "close; count fc1, most of the model: half its units, each reading 90% of its inputs.",
                    "d": "a dropped unit takes its weights with it, but half the fc units and 90% of the filters "
                         "stay."},
                   f"The measured share is {share:.2f}: fc1 holds most of the model and keeps half its units, each "
                   "reading only the kept conv2 filters' outputs (0.5 x 0.9 = 0.45 of fc1).")


@exercise("5b.1", "predict: which reading keeps conv1 without an L0 cost?")
def _keeps_conv1(answer, screen, rnd=30):
    from emfl.nn.history import ablation_rows

    options = {"a": "lam0 = 0, v_grad = pi", "b": "lam0 = 0, theta_space = logit", "c": "lam0 = 0, inputs = unit",
               "d": "lam0 = 0, v_opt = adam"}
    rows = {r["reading"]: r for r in ablation_rows(screen, None, rnd)}
    kept = {k: rows[v]["alive"]["conv1"] for k, v in options.items()}
    right = max(kept, key=kept.get)
    return choice(answer, right, "abcd",
                   {"a": "pi_s is nearly 0 or 1 at the end of a round (T = 1e-3): it tells the server what z_s tells it.",
                    "b": "saturation matters only far from the threshold; a gate that flips is near it.",
                    "d": "Adam, like Adamax, steps by the sign of a lone gradient, and takes larger steps on rare ones.",
                    "c": "standardised inputs are the paper's silence, and they move conv1's norms most."},
                   f"conv1 keeps {kept[right]:.0f} of 32 filters with inputs in [0, 1], against "
                   f"{min(kept.values()):.0f}-{sorted(kept.values())[-2]:.0f} otherwise. conv1's weight gradients scale with "
                   "its inputs: standardised pixels have a mean square of 1, pixels in [0, 1] about 0.29 on CIFAR-10. "
                   "Larger steps move a filter's norm past the margin T logit(0.99) = 0.0046 in a round, and a client "
                   "that ends the round with a norm below its threshold uploads z = 0.")


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


# --------------------------------------------------------------------------- 06 · FedSparse on FEMNIST


@exercise("6.1", "FedAvg's communication over the paper's 6,000 rounds")
def _fedavg_6000(answer):
    from emfl.nn import models

    if (problem := _number(answer, "a number of GiB")) is not None:
        return False, problem
    answer = as_number(answer)
    d = models.num_parameters(models.make_model("lenet5", (1, 28, 28), 62))
    right = 2 * 10 * 4 * d * 6000 / GIB
    if abs(answer - right) <= 0.005 * right:
        return True, f"right: {right:.2f} GiB, the paper's 272 GB: exact, since FedAvg sends the same every round."
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
    return choice(answer, "a", "abc",
                   {"b": "each writer's test images are fixed by LEAF's 90/10 split; they never change.",
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
    return choice(answer, "a", "abc",
                   {"b": "the server sends its thresholds with the surviving units every round.",
                    "c": "lam0 is constant through the run; nothing anneals it."},
                   "With T = 1e-3 a kept unit's theta_g is exactly 1 in float32 once its norm is about 0.017 above "
                   "its threshold, and a unit whose theta_g falls to 0.1 is pruned: no gradient reaches the "
                   "threshold, |pi_s - theta| is exactly 0, and the architecture stays as the first rounds left it.")
