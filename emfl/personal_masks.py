"""FedSpa on the toy world: personal masks of fixed density, beside FedSparse's shared gates.

The spike-and-slab prior (Eq. 13-15) gives every client gates ``z_s``; FedSparse learns their
probabilities ``theta`` at the server and lets each client's ``pi_s`` move away from them.
FedSpa (Huang et al. 2022) keeps the gates with the client: a binary mask ``m_s`` with exactly
``k = round(D d)`` ones, its own spike-and-slab draw, which the server never pools.  Client
``s``'s parameters are ``phi_s = w_s * m_s`` with ``w_s ~ N(w, 1/lam)`` on the mask (the slab).

A round on the toy world (linear regression, everything in closed form but the mask's move):

1. the server sends ``w`` on each client's mask (``k`` values a client; it knows the masks);
2. client E-step for its fixed mask: the MAP ``w_s`` on the mask, the ridge fit towards ``w``
   (Eq. 7 restricted to the mask's features, as :func:`emfl.spike_slab.e_step` does for a subset);
3. the mask moves (:func:`move_mask`): the ``floor(alpha_t k)`` active coordinates of smallest
   ``|w_s|`` off, as many inactive ones of largest data gradient ``|X^T (X phi_s - y)| / sigma^2``
   on, with ``alpha_t = prune_alpha / 2 (1 + cos(pi t / T_end))`` (RigL's cosine decay: ``prune_alpha``
   at round 0, 0 from round ``T_end`` on);
4. the server averages each coordinate over the clients whose mask held it
   (:func:`average_held`); the clients send ``k`` values and, when it moved, the mask.

The neural-network version is :mod:`emfl.nn.algorithms.fedspa`; the details FedSpa's abstract
leaves open are listed there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from emfl import linreg
from emfl._checks import check_positive, check_positive_int
from emfl.em import FederatedAlgorithm
from emfl.spike_slab import _fit_on

__all__ = ["PersonalState", "fedspa", "move_mask", "average_held", "prune_fraction", "first_masks",
           "make_grouped_linreg", "local_mse", "support_recovery"]


def prune_fraction(prune_alpha: float, t: int, T_end: int) -> float:
    """The share of a mask's active coordinates swapped at round ``t``,
    ``alpha_t = prune_alpha / 2 (1 + cos(pi t / T_end))``: ``prune_alpha`` at round 0, 0 from round
    ``T_end`` on (the anneal's horizon; not the gates' temperature ``T`` of FedSparse)."""
    return 0.0 if t >= T_end else prune_alpha / 2 * (1 + math.cos(math.pi * t / T_end))


def move_mask(mask, w_s, grad, k: int) -> np.ndarray:
    """Switch off the ``k`` active coordinates of smallest ``|w_s|`` and on the ``k`` inactive
    ones (inactive before the move) of largest ``|grad|``; ``k`` is capped by the inactive count,
    so the mask keeps its number of ones.  Ties go to the lower index."""
    mask = np.asarray(mask, bool)
    k = min(int(k), int((~mask).sum()), int(mask.sum()))
    new = mask.copy()
    if k > 0:
        active, inactive = np.flatnonzero(mask), np.flatnonzero(~mask)
        off = active[np.argsort(np.abs(np.asarray(w_s)[active]), kind="stable")[:k]]
        on = inactive[np.argsort(-np.abs(np.asarray(grad)[inactive]), kind="stable")[:k]]
        new[off] = False
        new[on] = True
    return new


def average_held(values, masks, w_old) -> np.ndarray:
    """Each coordinate's mean over the clients (rows) whose mask holds it; ``w_old`` where none does."""
    values, masks = np.atleast_2d(values), np.atleast_2d(masks).astype(float)
    count = masks.sum(axis=0)
    return np.where(count > 0, (masks * values).sum(axis=0) / np.maximum(count, 1), np.asarray(w_old, float))


def first_masks(S: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """Every client's first mask: ``k`` of ``d`` coordinates at random, ``(S, d)`` booleans."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((S, d), bool)
    for s in range(S):
        masks[s, rng.choice(d, size=k, replace=False)] = True
    return masks


class PersonalState(NamedTuple):
    """The server's ``w``, every client's mask (``(S, d)``; the server knows them), the values
    and mask bits sent so far, and the round."""

    w: np.ndarray
    masks: np.ndarray
    values_down: int = 0
    values_up: int = 0
    mask_bits_up: int = 0
    round: int = 0


def fedspa(density: float, lam: float, prune_alpha: float = 0.5, T_end: int = 10, S: int | None = None,
           seed: int = 0) -> FederatedAlgorithm:
    """FedSpa on the toy world as ``FederatedAlgorithm(init, apply)``; ``init(w0, S)`` draws the
    first masks (``k = max(1, round(density d))`` ones each).  The mask's move swaps
    ``floor(alpha_t k)`` coordinates after round ``t``'s fit, ``alpha_t = prune_fraction(prune_alpha,
    t, T_end)``.  ``apply`` returns ``(state, (w_s, masks_trained))``: the clients' fits and the masks
    they were fitted on."""
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ValueError(f"density must be in (0, 1] (the share of coordinates a client keeps); got {density!r}")
    check_positive("lam", lam)
    if not 0 <= prune_alpha <= 1:
        raise ValueError(f"prune_alpha must be in [0, 1]; got {prune_alpha!r}")
    check_positive_int("T_end", T_end)

    def init(w0, S: int) -> PersonalState:
        w0 = np.array(w0, dtype=float)
        k = max(1, round(density * w0.size))
        return PersonalState(w0, first_masks(S, w0.size, k, seed))

    def apply(state: PersonalState, data) -> tuple:
        w, masks = state.w, state.masks
        if masks.shape != (data.S, data.d):
            raise ValueError(f"the state holds masks for {masks.shape[0]} clients of {masks.shape[1]} "
                             f"coordinates; the data has {data.S} of {data.d}: init(w0, S={data.S})")
        k = int(masks[0].sum())
        a_t = prune_fraction(prune_alpha, state.round, T_end)
        w_s = np.array([_fit_on(c, m, w, lam) for c, m in zip(data.clients, masks)])
        new_masks, bits = masks.copy(), 0
        for s, c in enumerate(data.clients):
            grad = c.X.T @ (c.X @ w_s[s] - c.y) / c.sigma2  # the data term's gradient at phi_s
            new_masks[s] = move_mask(masks[s], w_s[s], grad, math.floor(a_t * k))
            bits += data.d if not np.array_equal(new_masks[s], masks[s]) else 0
        w_new = average_held(w_s, masks, w)
        n = int(masks.sum())
        new = PersonalState(w_new, new_masks, state.values_down + n, state.values_up + n, state.mask_bits_up + bits,
                            state.round + 1)
        return new, (w_s, masks)

    return FederatedAlgorithm(f"fedspa[D={density:g}, lam={lam:g}]", init, apply)


def make_grouped_linreg(S: int = 10, d: int = 8, supports=((0, 1, 2, 3), (2, 3, 4, 5)), lam_true: float = 25.0,
                        n_range: tuple = (20, 60), sigma: float = 0.5, seed: int = 0) -> linreg.FederatedLinReg:
    """Clients that use different features: client ``s`` belongs to group ``s mod len(supports)``
    and its weights are ``N(w_true, 1/lam_true)`` on that group's features, 0 elsewhere.
    ``phi_true`` holds the clients' weights."""
    check_positive_int("S", S)
    check_positive_int("d", d)
    if not supports or any(not 0 <= j < d for sup in supports for j in sup):
        raise ValueError(f"supports must be non-empty tuples of feature indices below d = {d}; got {supports}")
    rng = np.random.default_rng(seed)
    w_true = rng.choice([-1.0, 1.0], size=d) * rng.uniform(1.0, 2.0, size=d)
    phi = np.zeros((S, d))
    clients = []
    for s in range(S):
        on = np.zeros(d, bool)
        on[list(supports[s % len(supports)])] = True
        phi[s] = np.where(on, w_true + rng.normal(size=d) / np.sqrt(lam_true), 0.0)
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        X = rng.normal(size=(n, d))
        clients.append(linreg.Client(X, X @ phi[s] + sigma * rng.normal(size=n), sigma**2))
    return linreg.FederatedLinReg(tuple(clients), w_true, phi, float(lam_true))


def local_mse(test, phis) -> float:
    """The mean over clients of each client's own model ``phis[s]`` on its own held-out data."""
    return float(np.mean([t.mse(p) for t, p in zip(test, phis)]))


def support_recovery(masks, phi_true) -> float:
    """The share of clients whose mask is exactly the support of their true weights."""
    return float(np.mean([np.array_equal(m, p != 0) for m, p in zip(np.asarray(masks, bool), phi_true)]))
