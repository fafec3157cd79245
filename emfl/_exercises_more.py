"""Checks of the exercises of notebooks 07 and 08; see :mod:`emfl.exercises`."""

from __future__ import annotations

import math

import numpy as np

from emfl._exercise_kit import as_array, as_count, as_number, call_answer, choice, close, exercise

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- 07 · FedSpa's personal masks


@exercise("7.1", "how many coordinates the mask swaps at round t")
def _prune_count(prune_count):
    # (prune_alpha, t, T_end, k)
    cases = ([(0.4, 3, 5, 20)]  # generic first: floor 2, round 3, the fraction 0.14, alpha c k < 0
             + [(0.5, t, 10, 4) for t in range(13)]  # section 2's table
             + [(0.3, t, 7, 13) for t in (0, 2, 3, 6, 7, 9)]
             + [(0.5, t, 200, 410_821) for t in (0, 1, 50, 100, 150, 199, 200, 250, 399)])
    for alpha, t, T, k in cases:
        got = call_answer(prune_count, alpha, t, T, k)
        if as_count(got) is None:
            if as_number(got) is not None and 0 <= as_number(got) <= 1:
                return False, "that looks like the fraction alpha_t; the exercise asks for a count of coordinates out of k."
            return False, f"return a whole number of coordinates; for t = {t} you returned {got!r}."
        got = as_count(got)
        # alpha / 2 (1 + cos 2a) = alpha cos^2 a with a = pi t / (2T)
        x = alpha * math.cos(math.pi * t / (2 * T)) ** 2 * k if t < T else 0.0
        right = math.floor(x + 1e-9)
        if got == right or (abs(x - round(x)) < 1e-9 and got == right - 1):
            continue
        if got == round(x) or got == math.ceil(x):
            return False, "a client swaps whole coordinates and never more than alpha_t k of them: round down."
        if t >= T and got == math.floor(alpha / 2 * (1 + math.cos(math.pi * t / T)) * k):
            return False, ("past round T_end the cosine climbs again: the schedule is 0 from round T_end on, so the "
                           "masks stay where they are.")
        c = math.cos(math.pi * t / T)
        if got in (math.floor(alpha * c * k), math.floor(alpha * (1 + c) * k)):
            return False, ("alpha_t runs from prune_alpha at round 0 to 0 at round T_end along half a cosine: check "
                           "the factor in front of the cosine and what is added to it.")
        return False, ("compare with section 2's table: alpha_t is a cosine schedule from prune_alpha at round 0 to 0 "
                       "at round T_end, times k.")
    return True, ("right: for k = 4, 2 swaps at round 0, 1 from round 1, none from round 6 on (section 2's table); "
                  "on a network the same fraction is taken of each layer's active weights.")


def _erk(shapes, D) -> np.ndarray:
    """ERK densities, solved by trying the layers of largest score as dense, one more at a time
    (the set of dense layers is always such a top set)."""
    sizes = np.array([math.prod(s) for s in shapes], dtype=float)
    score = np.array([sum(s) for s in shapes], dtype=float) / sizes
    order = np.argsort(-score, kind="stable")
    for m in range(len(shapes) + 1):
        dense, rest = order[:m], order[m:]
        out = np.ones(len(shapes))
        if len(rest) == 0:
            return out
        eps = (D * sizes.sum() - sizes[dense].sum()) / (score[rest] * sizes[rest]).sum()
        if eps * score[rest].max() <= 1 + 1e-12:
            out[rest] = eps * score[rest]
            return out
    return np.ones(len(shapes))


@exercise("7.2", "the ERK density of each layer")
def _erk_densities(erk_densities):
    cases = [([(20, 10), (30, 20)], 0.5),
             ([(32, 3, 5, 5), (64, 32, 5, 5), (512, 1600), (10, 512)], 0.5),  # CIFAR-10's LeNet-5
             ([(32, 1, 5, 5), (64, 32, 5, 5), (512, 1024), (62, 512)], 0.2),  # FEMNIST's
             ([(8, 4), (2, 8), (4, 2), (16, 8)], 0.7)]  # a third layer turns dense only after the second is
    for shapes, D in cases:
        raw = call_answer(erk_densities, [tuple(s) for s in shapes], D)
        try:
            got = as_array(raw)
        except (TypeError, ValueError):
            return False, f"return one density per layer, a list or array of {len(shapes)} numbers."
        if got.shape != (len(shapes),):
            return False, (f"return one density per layer: {len(shapes)} numbers for {len(shapes)} shapes; "
                           f"got shape {got.shape}.")
        if not np.all(np.isfinite(got)):
            return False, "some densities are not finite (nan or inf)."
        right = _erk(shapes, D)
        if close(raw, right, rtol=1e-6):
            continue
        sizes = np.array([math.prod(s) for s in shapes], dtype=float)
        score = np.array([sum(s) for s in shapes], dtype=float) / sizes
        if close(got, np.full(len(shapes), D)):
            return False, ("that is the same density in every layer. ERK weighs layer l by (sum of its dims) / "
                           "(product of its dims): small layers with many inputs and outputs keep more.")
        if np.any(got > 1 + 1e-9):
            return False, ("a density above 1: a layer cannot keep more weights than it has. Keep such a layer dense "
                           "and share what is left of the budget among the others.")
        kept = float((got * sizes).sum() / sizes.sum())
        if abs(kept - D) > 1e-4 * D:
            eps0 = D * sizes.sum() / (score * sizes).sum()
            if close(got, np.minimum(1.0, eps0 * score)):
                return False, (f"the layers together keep {kept:.3f} of their weights, not D = {D}: once a layer is "
                               "dense, solve for eps again over the other layers.")
            return False, (f"the layers together keep {kept:.3f} of their weights; they must keep D = {D}: "
                           "sum_l D_l N_l = D sum_l N_l.")
        return False, ("the layers keep D in all, but not spread ERK's way: how does a layer's density depend on "
                       "the sum and the product of its dims?")
    return True, ("right: on LeNet-5 the first conv layer and the output layer are dense, and conv2 and fc1 share the "
                  "rest, the densities section 5 printed.")


def _lenet_weights():
    """CIFAR-10's LeNet-5: the shapes of its conv and linear weights, and its parameter count."""
    from torch import nn

    from emfl.nn import models

    net = models.make_model("lenet5", (3, 32, 32), 10)
    shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return shapes, models.num_parameters(net)


@exercise("7.3", "the bytes a FedSpa client sends up")
def _bytes_up(answer, D=0.3):
    got = as_count(answer)
    if got is None:
        return False, f"answer with a whole number of bytes; you gave {answer!r}."
    shapes, d = _lenet_weights()
    sizes = [math.prod(s) for s in shapes]
    maskable, others = sum(sizes), d - sum(sizes)
    kept = sum(round(f * n) for f, n in zip(_erk(shapes, D), sizes))
    mask = -(-maskable // 8)
    right = 4 * (kept + others) + mask
    if got == right:
        return True, (f"right: {right:,} bytes, {right / (4 * d):.2f} of FedAvg's {4 * d:,}: {kept:,} kept weights and "
                      f"{others} biases at 4 bytes, and the new mask, {mask:,} bytes. However ERK spreads them, the "
                      "layers keep D of the maskable weights (up to each layer's rounding), so the count does not depend on the "
                      "spread; in a "
                      "round where the mask did not move the client sends the values alone.")
    hints = {4 * kept + mask: ("the biases are held by every mask (only conv and linear weights are masked): they "
                               "travel too."),
             4 * (kept + others): ("that is what the server sends down. A client whose mask moved also sends the new "
                                   "mask, one bit a maskable weight."),
             4 * (kept + others) + maskable: "the mask travels as bits, 8 of them to a byte.",
             4 * (kept + others) + -(-d // 8): "the mask covers the conv and linear weights only; a bias needs no bit.",
             4 * round(D * d) + mask: ("D applies to the conv and linear weights only; the biases are always held, "
                                      "all of them."),
             4 * d: "that is FedAvg's dense message.",
             8 * (kept + others) + mask: "a float32 value is 4 bytes."}
    if got in hints:
        return False, hints[got]
    return False, ("count what the client sends: the values it holds (which are masked, which are not?) at 4 bytes "
                   "each, and the new mask, in whole bytes.")


@exercise("7.4", "predict: a mask that never moves")
def _no_moves(answer, data, lam=1.0, rounds=12):
    from emfl import linreg
    from emfl import personal_masks as pm

    test = linreg.held_out(data, n=200, seed=1)
    shares, mses = {}, {}
    for prune_alpha in (0.0, 0.5):
        alg = pm.fedspa(0.5, lam=lam, prune_alpha=prune_alpha, T_end=10)
        state = alg.init(np.zeros(data.d), data.S)
        for _ in range(rounds):
            state, (w_s, masks) = alg.apply(state, data)
        shares[prune_alpha] = pm.support_recovery(masks, data.phi_true)
        mses[prune_alpha] = pm.local_mse(test, w_s * masks)
    options = {"a": 0.0, "b": 1.0, "c": 0.5}
    right = min(options, key=lambda k: abs(options[k] - shares[0.0]))
    return choice(answer, right, "abc",
                   {"a": "run it: pm.fedspa(0.5, lam=1.0, prune_alpha=0.0, T_end=10), 12 rounds, then pm.support_recovery.",
                    "b": ("without swaps nothing pushes a right mask off, but nothing brings a wrong one to the "
                          "support either: where do the masks start?"),
                    "c": ("prune_alpha = 0.5 gets half the masks there by swapping; with prune_alpha = 0, "
                          "floor(alpha_t k) is 0 from the first round.")},
                   f"{shares[0.0]:.0%} of the masks are exact and the local MSE is {mses[0.0]:.2f}, against "
                   f"{shares[0.5]:.0%} and {mses[0.5]:.2f} with prune_alpha = 0.5. Without the move each mask keeps "
                   "its first random draw, and 4 of 8 at random hits a given support once in 70: the move, not the "
                   "fit, finds the support.")


@exercise("7.5", "why FedSpa's global accuracy is lower than its local one")
def _global_below_local(answer):
    return choice(answer, "a", "abc",
                   {"b": ("at D = 0.5 the same run's local accuracy is within 3 points of FedAvg's for half the bytes: "
                          "both accuracies are read from one run with the same messages. What model does each score?"),
                    "c": ("FedAvg is scored on the same global test images. What differs between the two methods is "
                          "the model that is scored.")},
                   "The server's weights are averaged one by one over the clients that held them; no client trains "
                   "or uses that dense combination, while each client's masked model is trained for its own data. "
                   "FedSpa aims at the personalised models, and its global accuracy is a by-product.")


def _lenet_positions():
    """CIFAR-10's LeNet-5: each conv and linear weight's shape and the positions it is applied at
    (a 5x5 conv without padding: the input's side minus 4; each max-pool halves it; a linear layer: 1)."""
    shapes, _ = _lenet_weights()
    side1 = 32 - 4  # conv1 on 32 x 32
    side2 = side1 // 2 - 4  # pool, conv2
    return shapes, [side1**2, side2**2, 1, 1]


@exercise("7.6", "the multiply-adds of a masked forward pass")
def _masked_macs(answer, D=0.3):
    shapes, positions = _lenet_positions()
    sizes = [math.prod(s) for s in shapes]
    kept = [round(f * n) for f, n in zip(_erk(shapes, D), sizes)]
    right = sum(k * p for k, p in zip(kept, positions))
    dense = sum(n * p for n, p in zip(sizes, positions))
    got = as_number(answer)
    if got is None:
        return False, f"answer with a whole number of multiply-adds; you gave {answer!r}."
    if 0 < got < 1:
        return False, "that looks like a share of the dense model's cost; the exercise asks for a count of multiply-adds."
    if as_count(answer) is None:
        return False, ("a count of multiply-adds is a whole number: layer l keeps round(D_l N_l) weights, a whole "
                       "number, and each is used a whole number of times.")
    got = as_count(answer)
    if got == right:
        return True, (f"right: {right:,} multiply-adds, {right / dense:.2f} of the dense LeNet-5's {dense:,}. The "
                      f"first conv layer keeps all its {sizes[0]:,} weights and applies each at {positions[0]} "
                      f"positions: {kept[0] * positions[0] / right:.0%} of the client's cost, which is why the share "
                      "in section 6's table stays above D on CIFAR-10.")
    biases = sum(s[0] * p for s, p in zip(shapes, positions))
    hints = {sum(kept): ("that counts the kept weights; a conv layer uses each of its weights once at every position "
                         "of its output."),
             sum(k * p for k, p in zip(kept, (32 * 32, 14 * 14, 1, 1))): (
                 "a 5x5 kernel without padding fits at (H - 4) x (W - 4) positions of an H x W input, not at all "
                 "H x W."),
             sum(k * p for k, p in zip(kept, ((32 - 4) ** 2, (32 - 4 - 4) ** 2, 1, 1))): (
                 "the second conv layer reads the first one's output after a 2 x 2 max-pool, which halves each side."),
             sum(round(D * n) * p for n, p in zip(sizes, positions)): (
                 "that keeps D of every layer's weights. FedSpa's layers keep their ERK densities (exercise 7.2): "
                 "some layers are dense."),
             dense: "that is the dense model's cost: the mask switches weights off.",
             right + biases: "a bias is an addition, not a multiply-add: count the weights' multiply-adds only."}
    if got in hints:
        return False, hints[got]
    return False, ("count, layer by layer, the weights the mask keeps times the positions each is applied at: a conv "
                   "layer's output height x width, a linear layer's 1.")


@exercise("7.7", "the round from which the mask stops moving")
def _freeze_round(freeze_round):
    # (prune_alpha, T_end, k)
    cases = [(0.4, 20, 7),  # generic first: 12; the named mistakes give 11, 13, 15, 8 and 20
             (0.5, 10, 4), (0.5, 12, 4), (0.3, 7, 13), (1.0, 50, 3), (0.3, 40, 100),
             (0.5, 10, 1), (0.0, 10, 8), (0.5, 100, 2),  # no swap at all, or the first round only
             (0.5, 200, 410_821)]  # fc1 of LeNet-5 at D = 0.5 over a 200-round run

    def first_zero(prune_alpha, T_end, k, count=math.floor, schedule=None, slack=1e-9):
        """The first round whose move swaps nothing, by trying the rounds one by one."""
        for t in range(T_end + 1):
            c = math.cos(math.pi * t / T_end)
            a_t = schedule(prune_alpha, c) if schedule else (prune_alpha / 2 * (1 + c) if t < T_end else 0.0)
            if count(a_t * k + slack) == 0:
                return t
        return T_end

    for prune_alpha, T_end, k in cases:
        raw = call_answer(freeze_round, prune_alpha, T_end, k)
        got = as_count(raw)
        if got is None:
            return False, (f"return a round, a whole number; for prune_alpha = {prune_alpha}, T_end = {T_end}, "
                           f"k = {k} you returned {raw!r}.")
        right = first_zero(prune_alpha, T_end, k)
        if got in (right, first_zero(prune_alpha, T_end, k, slack=-1e-9)):  # alpha_t k exactly 1: either reading
            continue
        if got == right - 1:
            return False, ("that is the last round whose move still swaps a coordinate; the exercise asks for the "
                           "first round whose move swaps none.")
        if got == right + 1:
            return False, "rounds count from 0, as in section 2's table."
        if got == first_zero(prune_alpha, T_end, k, count=round, slack=0.0):
            return False, "a client swaps floor(alpha_t k) coordinates: round down, as in exercise 7.1."
        if got == first_zero(prune_alpha, T_end, k, schedule=lambda a, c: max(a * c, 0.0)):
            return False, "check alpha_t against exercise 7.1: half a cosine from prune_alpha at round 0 to 0 at T_end."
        if got == T_end:
            return False, ("alpha_t reaches 0 at round T_end, but floor(alpha_t k) reaches 0 as soon as alpha_t k "
                           "drops below 1.")
        return False, ("the mask stops moving at the first round t with floor(alpha_t k) = 0, that is alpha_t k < 1: "
                       "solve that for t, or try the rounds one by one with your prune_count.")
    return True, ("right: the toy world's masks (k = 4) stop moving at round 6 of T_end = 10, while fc1 of LeNet-5 at "
                  "D = 0.5 (k = 410,821) still swaps a coordinate in round T_end - 1: a large layer moves until the "
                  "anneal ends.")


# --------------------------------------------------------------------------- 08 · Information flow


@exercise("8.1", "the ceiling of a binned layer")
def _max_ixt(max_ixt):
    # cases where the ceiling is reached: N <= bins^units, or N a multiple of bins^units
    cases = [(3, 4, 4096), (10, 30, 4096), (1, 32, 4096), (512, 30, 1000), (2, 2, 3), (2, 3, 63), (5, 2, 96)]
    for units, bins, N in cases:
        raw = call_answer(max_ixt, units, bins, N)
        if as_number(raw) is None:
            return False, f"return one number of bits; for units = {units}, bins = {bins}, N = {N} you returned {raw!r}."
        cells = bins ** units  # the symbols the grid can make (a Python int: exact)
        # the plug-in entropy of N inputs spread as evenly as possible over min(cells, N) symbols
        right = math.log2(min(cells, N))
        if close(raw, right):
            continue
        grid, inputs = units * math.log2(bins), math.log2(N)
        if close(raw, right * LN2):
            return False, "bits, not nats: take logarithms to base 2."
        if close(raw, grid) and grid > inputs:
            return False, ("the plug-in entropy is counted over the N inputs: how many different symbols can N "
                           "inputs produce?")
        if close(raw, inputs) and grid < inputs:
            return False, (f"{units} unit(s) in {bins} bins cannot tell {N} inputs apart: how many symbols can the "
                           "grid make?")
        if close(raw, math.log2(bins)) or close(raw, min(math.log2(bins), inputs)):
            return False, "every unit is binned on its own: the symbol is the vector of all the units' bins."
        return False, ("the entropy of a uniform distribution over K values is log2 K: what is K, given the grid's "
                       "symbols and the N inputs?")
    return True, ("right: act1's 10 units in 30 bins could separate far more than 4,096 inputs, so the ceiling is "
                  "log2 4096 = 12 bits; act5's 3 units in 4 bins cannot exceed 6 bits.")


_TABLES = [np.array([[3, 1], [0, 4], [2, 2], [1, 0], [0, 0]]),  # generic first: the named mistakes all differ
           np.array([[2, 0], [0, 2]]),
           np.array([[2, 0, 0], [0, 1, 0], [0, 0, 1]]),  # section 1's copy of the label
           np.array([[5, 0, 1], [0, 0, 7], [2, 3, 0], [1, 1, 1], [0, 6, 2], [4, 0, 0]])]


def _h(p) -> float:
    p = np.asarray(p, dtype=float).ravel()
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


@exercise("8.2", "I(X;T) of a binned layer from its count table")
def _ixt(ixt):
    for counts in _TABLES:
        raw = call_answer(ixt, counts.copy())
        if as_number(raw) is None:
            return False, f"return one number of bits; got {raw!r}."
        got = as_number(raw)
        if not math.isfinite(got):
            return False, "your I(X;T) is not finite: a symbol no input lands in adds nothing (0 log 0 = 0); leave it out."
        right = _h(counts.sum(axis=1))
        if close(raw, right):
            continue
        N = counts.sum()
        if close(raw, right * LN2):
            return False, "bits, not nats: take logarithms to base 2."
        if close(raw, _h(counts)):
            return False, ("that is the entropy of the pair (T, Y). I(X;T) is about T alone: the labels play no "
                           "part in it.")
        if close(raw, math.log2(N)):
            return False, ("log2 N is the ceiling, reached only when every input has a symbol of its own; here "
                           "inputs share symbols.")
        if any(close(raw, math.log2(K)) for K in (len(counts), (counts.sum(1) > 0).sum())):
            return False, "that treats every symbol as equally likely: weigh each by the share of inputs that land in it."
        if close(raw, _h(counts.sum(axis=0))):
            return False, "that is H(Y), the labels' entropy: count the symbols, the rows of the table."
        return False, "for a deterministic layer on distinct inputs, what does I(X;T) reduce to? Count it from the table's rows."
    return True, "right: I(X;T) = H(T), what info.binning computes from the binned activations."


@exercise("8.3", "I(T;Y) of a binned layer from its count table")
def _ity(ity):
    for counts in _TABLES + [np.array([[2, 2], [2, 2]])]:
        raw = call_answer(ity, counts.copy())
        if as_number(raw) is None:
            return False, f"return one number of bits; got {raw!r}."
        got = as_number(raw)
        if not math.isfinite(got):
            return False, ("your I(T;Y) is not finite: a cell with count 0 adds nothing (0 log 0 = 0); leave the empty "
                           "cells out of the sums.")
        p = counts / counts.sum()
        pt, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
        nz = p > 0
        right = float((p[nz] * np.log2(p[nz] / (pt * py)[nz])).sum())  # the KL divergence of p(t, y) from p(t) p(y)
        if close(raw, right):
            continue
        h_t, h_y, h_ty = _h(pt), _h(py), _h(p)
        h_t_given_y = [_h(counts[:, y]) for y in range(counts.shape[1])]
        if close(raw, right * LN2):
            return False, "bits, not nats: take logarithms to base 2."
        if got < -1e-12:
            return False, "mutual information is never negative. Check which entropy is subtracted from which."
        if close(raw, h_t - float(np.mean(h_t_given_y))):
            return False, "weigh each H(T | Y = y) by p(y), the share of inputs with label y, not by 1 / (number of labels)."
        if close(raw, h_ty - h_y):
            return False, "that is H(T | Y), what T still holds once Y is known, not what T tells about Y."
        if close(raw, h_t):
            return False, "that is H(T), which is I(X;T) (exercise 8.2): remove what T holds that Y does not explain."
        if close(raw, h_y):
            return False, "H(Y) is the ceiling of I(T;Y), reached only when the symbol determines the label."
        return False, ("count p(t, y), p(t) and p(y) from the table (plug-in): I(T;Y) measures how far p(t, y) is "
                       "from p(t) p(y), in bits.")
    return True, ("right: 1.5 bits for section 1's copy of the label, 0 for the product table, and between 0 and H(Y) "
                  "always.")


@exercise("8.4", "the data-processing inequality")
def _dpi(answer):
    return choice(answer, "b", "abc",
                   {"a": ("training decides what T_4 keeps; T_5 is then computed from T_4 alone. Can a function of "
                          "T_4 hold more about Y than T_4 does?"),
                    "c": ("the weights decide which function a layer computes, not whether it is a function of the "
                          "layer before. Does the inequality care which function it is?")},
                   "Y -> X -> T_4 -> T_5 is a Markov chain, so I(X;T_5) <= I(X;T_4) and I(T_5;Y) <= I(T_4;Y), at "
                   "every round. Binned estimates need not obey it: the binned T_5 is not a function of the binned "
                   "T_4, though in section 6's table they keep the order.")


@exercise("8.5", "reading the committed runs: one local step, two splits, one result")
def _one_step(answer, runs):
    from emfl.nn import probes

    one = (runs[("IID", 1)], runs[("Dirichlet 0.1", 1)])
    acc = [np.array([r["global_acc"] for r in doc["records"]]) for doc in one]
    gap = float(np.max(np.abs(acc[0] - acc[1])))
    ity = [probes.probe_points(doc, "act5")[2] for doc in one]
    drift = float(np.max(np.abs(ity[0] - ity[1])))
    jumps = []
    for doc in one:
        _, before, after = probes.averaging_jumps(doc, "act5")
        jumps.append(float(np.mean(after - before)))
    final11 = [runs[(split, 11)]["records"][-1]["global_acc"] for split in ("IID", "Dirichlet 0.1")]
    return choice(answer, "c", "abc",
                   {"a": (f"the same global test set separates the 11-step runs by {final11[0] - final11[1]:.3f} in "
                          "global accuracy. What is special about one step?"),
                    "b": (f"the clients' own models do see the skew: their act5 jump at averaging is {jumps[1]:+.3f} "
                          f"bits under Dirichlet(0.1) against {jumps[0]:+.3f} IID. What does the server make of ten "
                          "single steps from the same model?")},
                   f"The two one-step runs agree in global accuracy at all {len(acc[0])} evaluations"
                   + (" " if gap == 0 else f" (to {gap:.3f}) ")
                   + f"and their server's act5 I(T;Y) differs by at most {drift:.4f} bits: the "
                   "mean of one full-batch step on each of ten equal shards is one step on all the clients' data, "
                   "whatever the split. The skew only matters once the clients take several steps apart.")


@exercise("8.6", "I(T;Y) as a test statistic")
def _g_statistic(g_statistic):
    cases = _TABLES + [np.array([[7, 3], [2, 8]]), np.array([[2, 2], [2, 2]])]
    for counts in cases:
        raw = call_answer(g_statistic, counts.copy())
        if as_number(raw) is None:
            return False, f"return one number; got {raw!r}."
        got = as_number(raw)
        if not math.isfinite(got):
            return False, "your G is not finite: a cell with count 0 adds nothing (0 log 0 = 0); leave it out of the sum."
        N = counts.sum()
        p = counts / N
        pt, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
        nz = p > 0
        ity = float((p[nz] * np.log2(p[nz] / (pt * py)[nz])).sum())  # the plug-in I(T;Y) of exercise 8.3, bits
        right = 2 * N * LN2 * ity  # G = 2 N I(T;Y) in nats
        if close(raw, right, atol=1e-9):
            continue
        expected = (pt * py) * N  # the counts independence predicts
        if got < -1e-12:
            return False, "G is never negative: n ln(n / e) summed over the cells is N times a KL divergence."
        if close(raw, right / LN2):
            return False, "G uses natural logarithms: it is a log-likelihood ratio in nats."
        if close(raw, right / 2):
            return False, "the likelihood-ratio statistic is twice the log of the ratio of the two likelihoods."
        if close(raw, right / N) or close(raw, right / N / LN2):
            return False, ("that is computed from the probabilities: G counts the examples, so it grows with N for "
                           "the same proportions.")
        with np.errstate(divide="ignore", invalid="ignore"):
            pearson = float(np.where(expected > 0, (counts - expected) ** 2 / expected, 0.0).sum())
            uniform = 2 * float(np.where(counts > 0, counts * np.log(counts * counts.size / N), 0.0).sum())
        if close(raw, pearson):
            return False, "that is Pearson's X^2, (n - e)^2 / e summed; G sums 2 n ln(n / e) over the cells."
        if close(raw, uniform):
            return False, ("the counts expected under independence are n_t n_y / N, the product of the table's "
                           "margins over N, not N spread evenly over the cells.")
        if counts.shape == (2, 2):
            yates = np.where(counts > expected, counts - 0.5, counts + 0.5)  # scipy's default for one degree of freedom
            if close(raw, 2 * float((yates * np.log(yates / expected)).sum())):
                return False, ("on a 2 x 2 table scipy's chi2_contingency applies Yates' continuity correction unless "
                               "told correction=False; G is the statistic of the counts themselves.")
        return False, ("G = 2 sum over the cells of n_ty ln(n_ty / e_ty), with e_ty = n_t n_y / N the count "
                       "independence predicts.")
    return True, ("right: G = 2 N ln 2 I(T;Y). Under independence G is close to a chi-square with "
                  "(K_T - 1)(K_Y - 1) degrees of freedom, whose mean is (K_T - 1)(K_Y - 1): divided by 2 N ln 2, "
                  "the bias of the plug-in I(T;Y) that section 1 plots.")


def _mean_plugin_entropy(K, N) -> float:
    """The mean plug-in entropy (bits) of N draws, each uniform over K symbols: every symbol's count is
    Binomial(N, 1/K), and a symbol holding n of the N draws adds -(n / N) log2(n / N)."""
    from scipy import stats

    n = np.arange(1, N + 1)
    return float(-K * (stats.binom.pmf(n, N, 1.0 / K) * (n / N) * np.log2(n / N)).sum())


@exercise("8.7", "the entropy a random code reads")
def _expected_entropy(expected_entropy):
    # (K symbols, N inputs)
    cases = [(5, 7),  # generic first: the ceiling, the first-order bias and the occupied-symbols count all differ
             (64, 1000),  # act5 in 4 bins, a thousand inputs
             (1000, 1000), (2, 1), (1, 10), (3, 2), (10**12, 1000)]
    for K, N in cases:
        raw = call_answer(expected_entropy, K, N)
        if as_number(raw) is None:
            return False, f"return one number of bits; for K = {K}, N = {N} you returned {raw!r}."
        got = as_number(raw)
        if not math.isfinite(got):
            return False, ("your answer is not finite: a symbol that receives no input adds nothing (0 log 0 = 0); "
                           "leave n = 0 out of the sum.")
        right = _mean_plugin_entropy(K, N)
        if close(raw, right, rtol=1e-6, atol=1e-9):
            continue
        ceiling = math.log2(min(K, N))
        occupied = K * (1 - (1 - 1 / K) ** N)  # the mean number of symbols that receive an input
        if close(raw, right * LN2):
            return False, "bits, not nats: take logarithms to base 2."
        if close(raw, ceiling) or close(raw, math.log2(K)):
            return False, ("that is the ceiling of exercise 8.1, reached only when the inputs spread evenly: at random "
                           "some symbols receive several inputs and others none.")
        if close(raw, math.log2(occupied)):
            return False, ("that treats the symbols that receive an input as equally likely; they are not: weigh "
                           "each by the share of the inputs it receives.")
        if close(raw, right / K):
            return False, "that is one symbol's term; each of the K symbols contributes the same."
        if close(raw, math.log2(K) - (K - 1) / (2 * N * LN2)):
            return False, ("that is the first-order approximation (Miller-Madow); the exercise asks for the exact "
                           "mean: sum over n, the number of inputs one symbol receives.")
        if abs(got - right) < 0.02 * max(right, 1e-3):
            return False, ("close, but not the exact mean (a simulation, or an approximation?): a symbol receives n of "
                           "the N inputs with a binomial probability; sum its term over n.")
        return False, ("the plug-in entropy is -sum_t (n_t / N) log2(n_t / N); each count n_t is binomial: average "
                       "over it, symbol by symbol.")
    return True, ("right: a random code reads less than the ceiling of exercise 8.1. With K = N the shortfall is "
                  f"{math.log2(1000) - _mean_plugin_entropy(1000, 1000):.2f} bits at N = 1,000 and hardly changes with "
                  "N; with many more inputs than symbols it is close to (K - 1) / (2 N ln 2), the Miller-Madow term.")
