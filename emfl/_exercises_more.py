"""Checks of the exercises of notebooks 07 and 08; see :mod:`emfl.exercises`."""

from __future__ import annotations

import math

import numpy as np

from emfl._exercise_kit import as_array, as_count, as_number, call_answer, choice, close, exercise

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- 07 · FedSpa's personal masks


@exercise("7.1", "how many coordinates the mask swaps at round t")
def _prune_count(prune_count):
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
            return False, ("past round T the cosine climbs again: the schedule is 0 from round T on, so the masks "
                           "stay where they are.")
        c = math.cos(math.pi * t / T)
        if got in (math.floor(alpha * c * k), math.floor(alpha * (1 + c) * k)):
            return False, ("alpha_t runs from alpha at round 0 to 0 at round T along half a cosine: check the factor "
                           "in front of the cosine and what is added to it.")
        return False, "compare with section 2's table: alpha_t is a cosine schedule from alpha at round 0 to 0 at round T, times k."
    return True, ("right: 2 swaps a round at first, 1 from round 1, none from round 6 on for k = 4 (section 2's table); "
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
    for alpha in (0.0, 0.5):
        alg = pm.fedspa(0.5, lam=lam, alpha=alpha, T=10)
        state = alg.init(np.zeros(data.d), data.S)
        for _ in range(rounds):
            state, (w_s, masks) = alg.apply(state, data)
        shares[alpha], mses[alpha] = pm.support_recovery(masks, data.phi_true), pm.local_mse(test, w_s * masks)
    options = {"a": 0.0, "b": 0.5, "c": 1.0}
    right = min(options, key=lambda k: abs(options[k] - shares[0.0]))
    return choice(answer, right, "abc",
                   {"a": "run it: pm.fedspa(0.5, lam=1.0, alpha=0.0, T=10), 12 rounds, then pm.support_recovery.",
                    "b": ("alpha = 0.5 gets half the masks there by swapping; with alpha = 0, floor(alpha_t k) is 0 "
                          "from the first round."),
                    "c": ("without swaps nothing pushes a right mask off, but nothing brings a wrong one to the "
                          "support either: where do the masks start?")},
                   f"{shares[0.0]:.0%} of the masks are exact and the local MSE is {mses[0.0]:.2f}, against "
                   f"{shares[0.5]:.0%} and {mses[0.5]:.2f} with alpha = 0.5. Without the move each mask keeps its "
                   "first random draw, and 4 of 8 at random hits a given support once in 70: the move, not the fit, "
                   "finds the support.")


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
    return choice(answer, "a", "abc",
                   {"b": ("training decides what T_4 keeps; T_5 is then computed from T_4 alone. Can a function of "
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
    return choice(answer, "a", "abc",
                   {"b": (f"the clients' own models do see the skew: their act5 jump at averaging is {jumps[1]:+.3f} "
                          f"bits under Dirichlet(0.1) against {jumps[0]:+.3f} IID. What does the server make of ten "
                          "single steps from the same model?"),
                    "c": (f"the same global test set separates the 11-step runs by {final11[0] - final11[1]:.3f} in "
                          "global accuracy. What is special about one step?")},
                   f"The two one-step runs agree in global accuracy at all {len(acc[0])} evaluations"
                   + (" " if gap == 0 else f" (to {gap:.3f}) ")
                   + f"and their server's act5 I(T;Y) differs by at most {drift:.4f} bits: the "
                   "mean of one full-batch step on each of ten equal shards is one step on all the clients' data, "
                   "whatever the split. The skew only matters once the clients take several steps apart.")
