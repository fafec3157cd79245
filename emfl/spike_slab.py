"""FedSparse on the toy world: hard-EM under the spike-and-slab prior, with exact expectations.

The prior (Eq. 13-15) gates every client parameter: ``z_sj ~ Bern(theta_j)``, and
``phi_sj ~ N(w_j, 1/lam)`` when ``z_sj = 1``, ``phi_sj = 0`` when ``z_sj = 0``.  Hard-EM with
``q(z_sj) = Bern(pi_sj)`` and a point mass at ``w_sj`` for the slab gives each client the
objective of Eq. 17 (here as a loss to minimise, the negative of Eq. 17 without ``C``)::

    J_s(w_s, pi_s) = E_z[-log p(D_s | w_s * z)] + lam/2 sum_j pi_j (w_sj - w_j)^2
                     + lam0 sum_j pi_j - sum_j [pi_j log theta_j + (1 - pi_j) log(1 - theta_j)]

with ``lam0 = 1/2 log(lam2 / lam)`` when the spike is relaxed to ``N(0, 1/lam2)`` (Eq. 32-37),
and the server's M-step is Eq. 20: ``w = sum_s pi_s w_s / sum_s pi_s``, ``theta = mean_s pi_s``,
or its one-sample estimate from binary gates ``z_s ~ Bern(pi_s)`` (Eq. 21-22), which is what the
clients actually send: only the values whose gate is on, and the gates.

For linear regression with Gaussian noise the expectation over independent Bernoulli gates is
exact, so nothing here is sampled except the uploads::

    E_z ||y - X (w_s * z)||^2 = ||y - X (w_s * pi)||^2 + sum_j pi_j (1 - pi_j) w_sj^2 ||x_j||^2

The engine (``emfl.nn``) trains the same objective on neural networks, with one gate per group
of weights and the hard-concrete relaxation of Eq. 41 instead of the exact expectation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from emfl import linreg
from emfl._checks import as_vector, check_positive, check_positive_int
from emfl.em import FederatedAlgorithm

__all__ = [
    "lam0_from_precisions",
    "gate_kl",
    "gate_cross_entropy",
    "expected_sq_error",
    "client_loss",
    "gate_cost",
    "e_step",
    "m_step",
    "server_gradients",
    "SparseState",
    "fedsparse",
    "run",
    "trade_off",
    "trade_off_grid",
    "make_sparse_linreg",
]

EPS = 1e-6  # theta is kept in [EPS, 1 - EPS] so that its logarithms stay finite


def _check_lam0(lam0) -> float:
    if not (isinstance(lam0, (int, float, np.floating)) and np.isfinite(lam0) and lam0 >= 0):
        raise ValueError(f"lam0 must be a number >= 0 (the L0 cost in nats per parameter); got {lam0!r}")
    return float(lam0)


def _check_lam(lam) -> float:
    if not (isinstance(lam, (int, float, np.floating)) and np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a number >= 0 (the slab's precision; 0: no pull to w); got {lam!r}")
    return float(lam)


def lam0_from_precisions(lam: float, lam2: float) -> float:
    """Eq. 37: the L0 strength of a spike relaxed to ``N(0, 1/lam2)`` under a slab of precision
    ``lam``: ``lam0 = 1/2 log(lam2 / lam)``; positive when the spike is the narrower one."""
    check_positive("lam", lam)
    check_positive("lam2", lam2)
    return 0.5 * float(np.log(lam2 / lam))


def gate_kl(w_s, w, pi, lam: float, lam2: float, eps: float):
    """Eq. 32-35: ``E_q(z)[KL(q(phi | z) || p(phi | z))]`` for ``q(phi | z=1) = N(w_s, eps^2)``,
    ``q(phi | z=0) = N(0, eps^2)`` against the slab ``N(w, 1/lam)`` and the spike ``N(0, 1/lam2)``.

    As ``eps -> 0`` it equals ``lam pi (w_s - w)^2 / 2 + lam0 pi`` plus a constant (Eq. 37)."""
    w_s, w, pi = (np.asarray(a, dtype=float) for a in (w_s, w, pi))
    kl_on = -0.5 * np.log(lam) - np.log(eps) + lam * eps**2 / 2 - 0.5 + lam / 2 * (w_s - w) ** 2  # Eq. 33
    kl_off = -0.5 * np.log(lam2) - np.log(eps) + lam2 * eps**2 / 2 - 0.5  # Eq. 34
    return pi * kl_on + (1 - pi) * kl_off


def gate_cross_entropy(pi, theta):
    """Eq. 38: ``E_q(z)[log p(z | theta)] = sum_j pi_j log theta_j + (1 - pi_j) log(1 - theta_j)``."""
    pi = np.asarray(pi, dtype=float)
    theta = np.clip(np.asarray(theta, dtype=float), EPS, 1 - EPS)
    return float(np.sum(pi * np.log(theta) + (1 - pi) * np.log1p(-theta)))


def expected_sq_error(client: linreg.Client, w_s, pi) -> float:
    """``E_z ||y - X (w_s * z)||^2`` for independent gates ``z_j ~ Bern(pi_j)``, exactly:
    the error of the mean prediction plus the variance each gate adds."""
    m = w_s * pi
    r = client.y - client.X @ m
    c = np.einsum("ij,ij->j", client.X, client.X)
    return float(r @ r + np.sum(pi * (1 - pi) * w_s**2 * c))


def client_loss(client: linreg.Client, w_s, pi, w, theta, lam: float, lam0: float, ce_scale: float = 1.0) -> float:
    """The client's hard-EM loss: minus Eq. 17 without its constant (see the module docstring).

    ``ce_scale`` multiplies the gate cross-entropy (Eq. 38); 1 is the exact objective, the paper's
    networks use 1e-4 (Appendix A)."""
    data = expected_sq_error(client, w_s, pi) / (2 * client.sigma2)
    return (data + lam / 2 * float(np.sum(pi * (w_s - w) ** 2)) + lam0 * float(np.sum(pi))
            - ce_scale * gate_cross_entropy(pi, theta))


def gate_cost(theta, lam0: float, ce_scale: float = 1.0):
    """What switching gate ``j`` on costs a client, in nats: ``lam0 - ce_scale * logit(theta_j)``.

    ``client_loss`` is linear in each ``pi_j`` (the data term's ``pi_j^2`` parts cancel), so a
    hard-EM client switches a parameter on exactly when the fit it buys is worth this much."""
    theta = np.clip(np.asarray(theta, dtype=float), EPS, 1 - EPS)
    return lam0 - ce_scale * np.log(theta / (1 - theta))


def _fit_on(client: linreg.Client, on, w, lam: float) -> np.ndarray:
    """The best ``w_s`` for a fixed set of switched-on parameters: the ridge fit towards ``w``
    on those features (Eq. 7 restricted to them); zero elsewhere."""
    w_s = np.zeros(client.d)
    if on.any():
        Xa = client.X[:, on]
        P = Xa.T @ Xa / client.sigma2 + lam * np.eye(int(on.sum()))
        w_s[on] = np.linalg.lstsq(P, Xa.T @ client.y / client.sigma2 + lam * w[on], rcond=None)[0]
    return w_s


def _profile_loss(client, on, w, theta, lam, lam0, ce_scale) -> float:
    pi = on.astype(float)
    return client_loss(client, _fit_on(client, on, w, lam), pi, w, theta, lam, lam0, ce_scale)


def e_step(client: linreg.Client, w, theta, lam: float, lam0: float, ce_scale: float = 1.0,
           keep=None, exhaustive: bool = False) -> tuple:
    """The client's hard E-step: ``(w_s, pi_s)`` minimising :func:`client_loss`.

    The loss is linear in each ``pi_j``, so its minimum sits at binary ``pi`` (the client picks a
    subset of parameters); for a fixed subset the best ``w_s`` is a ridge fit (:func:`_fit_on`).
    The search starts from the gates the server's ``theta`` favours and flips one gate at a time
    while that lowers the loss (a local minimum); ``exhaustive`` tries every subset instead
    (``2^d`` fits: for checks on small ``d``).  Gates the server pruned (``keep = False``) stay off."""
    lam, lam0 = _check_lam(lam), _check_lam0(lam0)
    w = as_vector("w", w, client.d)
    theta = as_vector("theta", theta, client.d)
    keep = np.ones(client.d, bool) if keep is None else np.asarray(keep, bool)
    args = (w, theta, lam, lam0, ce_scale)
    idx = np.flatnonzero(keep)
    if exhaustive:
        best, best_on = np.inf, None
        for mask in range(2 ** idx.size):
            on = np.zeros(client.d, bool)
            on[idx] = [(mask >> k) & 1 for k in range(idx.size)]
            value = _profile_loss(client, on, *args)
            if value < best - 1e-12:
                best, best_on = value, on
        on = best_on
    else:
        on = keep & (theta >= 0.5)
        value = _profile_loss(client, on, *args)
        improved = True
        while improved:
            improved = False
            for j in idx:
                flip = on.copy()
                flip[j] = not flip[j]
                cand = _profile_loss(client, flip, *args)
                if cand < value - 1e-12:
                    on, value, improved = flip, cand, True
    return _fit_on(client, on, w, lam), on.astype(float)


def m_step(w_s, pi, w_old=None):
    """Eq. 20: ``w = sum_s pi_s w_s / sum_s pi_s`` and ``theta = mean_s pi_s`` (rows are clients).

    Where no client keeps a coordinate (``sum_s pi_s = 0``) ``w`` keeps its old value (or 0)."""
    w_s, pi = np.atleast_2d(w_s), np.atleast_2d(pi)
    total = pi.sum(axis=0)
    fallback = np.zeros(w_s.shape[1]) if w_old is None else np.asarray(w_old, dtype=float)
    w = np.where(total > 0, (pi * w_s).sum(axis=0) / np.where(total > 0, total, 1), fallback)
    return w, pi.mean(axis=0)


def server_gradients(w_s, pi, w, theta, lam: float) -> tuple:
    """Eq. 19: ``dL/dw = sum_s lam pi_s (w_s - w)`` and
    ``dL/dtheta = sum_s pi_s / theta - (1 - pi_s) / (1 - theta)``.

    Pass binary samples ``z_s`` as ``pi`` for the one-sample estimates of Eq. 21-22, which need
    only ``w_s * z_s`` and ``z_s`` from each client and are unbiased."""
    w_s, pi = np.atleast_2d(w_s), np.atleast_2d(pi)
    theta = np.clip(theta, EPS, 1 - EPS)
    return (lam * pi * (w_s - w)).sum(axis=0), (pi / theta - (1 - pi) / (1 - theta)).sum(axis=0)


class SparseState(NamedTuple):
    """The server of FedSparse: weights ``w``, gate probabilities ``theta``, the surviving
    coordinates ``keep``, the values sent down and up so far, and the round."""

    w: np.ndarray
    theta: np.ndarray
    keep: np.ndarray
    values_down: int = 0
    values_up: int = 0
    round: int = 0


def fedsparse(lam: float, lam0: float, ce_scale: float = 1.0, prune: float = 0.1,
              theta0: float = 0.99) -> FederatedAlgorithm:
    """FedSparse on the toy world as ``FederatedAlgorithm(init, apply)``.

    Round: the server sends the surviving coordinates of ``w`` and ``theta``; each client takes
    its hard E-step (:func:`e_step`), whose gates are binary, so the sample it uploads is its
    ``pi_s`` itself: only the values ``w_s * z_s`` that are on, and the gates (Eq. 21-22); the
    server takes the M-step of Eq. 20 and prunes the coordinates with ``theta <= prune``.
    ``apply`` returns ``(state, (w_s, z_s))``."""
    lam, lam0 = _check_lam(lam), _check_lam0(lam0)
    check_positive("ce_scale", ce_scale)
    if not 0 <= prune < 1 or not 0 < theta0 < 1:
        raise ValueError(f"prune must be in [0, 1) and theta0 in (0, 1); got {prune}, {theta0}")

    def init(w0) -> SparseState:
        w0 = np.array(w0, dtype=float)
        return SparseState(w0, np.full(w0.shape, theta0), np.ones(w0.shape, bool))

    def apply(state: SparseState, data) -> tuple:
        w = as_vector("w", state.w, data.d)
        down = 2 * int(state.keep.sum()) * data.S  # surviving w_j and theta_j, to every client
        out = [e_step(c, w, state.theta, lam, lam0, ce_scale, state.keep) for c in data.clients]
        w_s = np.array([o[0] for o in out])
        z = np.array([o[1] for o in out])
        w_new, theta = m_step(w_s * z, z, w)
        keep = state.keep & (theta > prune)
        theta = np.where(keep, theta, 0.0)
        w_new = np.where(keep, w_new, 0.0)
        up = int(z.sum())  # the values that are on (the gate bits are counted apart)
        new = SparseState(w_new, theta, keep, state.values_down + down, state.values_up + up, state.round + 1)
        return new, (w_s, z)

    return FederatedAlgorithm(f"fedsparse[lam={lam:g}, lam0={lam0:g}]", init, apply)


def run(algorithm: FederatedAlgorithm, data, w0, rounds: int) -> list:
    """Run ``rounds`` rounds; returns the list of server states, the initial one first."""
    check_positive_int("rounds", rounds)
    states = [algorithm.init(w0)]
    for _ in range(rounds):
        states.append(algorithm.apply(states[-1], data)[0])
    return states


def trade_off(data, test, lam: float, lam0: float, ce_scale: float = 1.0, rounds: int = 6) -> dict:
    """Run FedSparse from ``w = 0`` and measure what ``lam0`` buys and costs after ``rounds``:

    ``sparsity`` (share of pruned coordinates), ``comm`` (values sent both ways as a share of
    FedAvg's ``2 d S`` a round), ``global_mse`` (the server's ``w`` on every client's held-out
    data ``test``), ``local_mse`` (each client's own ``w_s`` on its own held-out data), ``theta``."""
    alg = fedsparse(lam, lam0, ce_scale)
    state = alg.init(np.zeros(data.d))
    for _ in range(rounds):
        state, (w_s, z) = alg.apply(state, data)
    return {"sparsity": 1 - float(state.keep.mean()),
            "comm": (state.values_down + state.values_up) / (2 * data.d * data.S * rounds),
            "global_mse": float(np.mean([t.mse(state.w) for t in test])),
            "local_mse": float(np.mean([t.mse(w * zz) for t, w, zz in zip(test, w_s, z)])),
            "theta": state.theta}


def trade_off_grid(data, test, lams, lam0s, ce_scales=(1.0,), rounds: int = 6) -> dict:
    """:func:`trade_off` at every ``(ce_scale, lam, lam0)``: a dict of arrays indexed that way,
    plus the axes ``lams``, ``lam0s``, ``ce_scales`` (what the slider panel of tutorial 04 reads)."""
    runs = [[[trade_off(data, test, lam, lam0, ce, rounds) for lam0 in lam0s] for lam in lams] for ce in ce_scales]
    out = {key: np.array([[[r[key] for r in row] for row in block] for block in runs])
           for key in ("sparsity", "comm", "global_mse", "local_mse", "theta")}
    out.update(lams=np.asarray(lams, float), lam0s=np.asarray(lam0s, float), ce_scales=np.asarray(ce_scales, float))
    return out


def make_sparse_linreg(S: int = 10, theta_true=(1, 1, 1, 1, 0.5, 0.5, 0, 0, 0, 0, 0, 0), w_true=None,
                       lam_true: float = 25.0, n_range: tuple = (20, 60), sigma: float = 0.5,
                       seed: int = 0) -> linreg.FederatedLinReg:
    """A federation drawn from the spike-and-slab model itself (Eq. 14): client ``s`` uses
    feature ``j`` with probability ``theta_true[j]``, with a weight ``N(w_true[j], 1/lam_true)``.
    ``phi_true`` holds the clients' sparse weights."""
    theta_true = np.asarray(theta_true, dtype=float)
    if theta_true.ndim != 1 or np.any((theta_true < 0) | (theta_true > 1)):
        raise ValueError(f"theta_true must be a vector of probabilities in [0, 1]; got {theta_true}")
    check_positive_int("S", S)
    check_positive("lam_true", lam_true)
    check_positive("sigma", sigma)
    d = theta_true.size
    rng = np.random.default_rng(seed)
    if w_true is None:
        w_true = rng.choice([-1.0, 1.0], size=d) * rng.uniform(1.0, 2.0, size=d)
    w_true = as_vector("w_true", w_true, d)
    z = rng.random((S, d)) < theta_true
    phi = np.where(z, w_true + rng.normal(size=(S, d)) / np.sqrt(lam_true), 0.0)
    clients = []
    for s in range(S):
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        X = rng.normal(size=(n, d))
        clients.append(linreg.Client(X, X @ phi[s] + sigma * rng.normal(size=n), sigma**2))
    return linreg.FederatedLinReg(tuple(clients), w_true, phi, float(lam_true))
