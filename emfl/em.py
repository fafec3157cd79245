"""Federated algorithms on the toy world as EM: a prior, a client E-step, a server M-step.

Every algorithm is a :class:`FederatedAlgorithm`, a pair of pure functions in the style of
FedJAX: ``init(w0) -> ServerState`` and ``apply(state, data) -> (state, phis)``, where ``phis``
are what the clients sent back this round.  :func:`run` iterates one.

================  ===========================================  ===============================
algorithm         client (E-step)                              server (M-step)
================  ===========================================  ===============================
``exact_em``      posterior ``N(m_s, Sigma_s)`` (Eq. 5)        ``w = mean_s m_s`` (Eq. 6)
``hard_em``       MAP ``phi_s*`` (Eq. 7) under the prior       the prior's M-step (Eq. 11, 46,
                                                               52)
``fedavg``        K gradient steps from ``w``                  mean (Eq. 11)
``fedprox``       K gradient steps with ``lam/2||phi-w||^2``   mean (Eq. 11)
================  ===========================================  ===============================

``server_lr`` turns the closed-form M-step into one gradient step: the server moves by
``server_lr * (M-step - w)``.  For the Gaussian prior this is a step of size ``server_lr / lam``
on the M-step objective (Eq. 10), i.e. FedAvg with a server learning rate; ``server_lr = 1``
is the closed form.  With the exact E-step it is gradient ascent on Eq. 4 (Appendix F).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from emfl import linreg
from emfl._checks import as_matrix, as_vector, check_positive, check_positive_int
from emfl.priors import GaussianPrior, LaplacePrior, MixturePrior, make_prior

__all__ = [
    "ServerState",
    "FederatedAlgorithm",
    "History",
    "exact_em",
    "hard_em",
    "fedavg",
    "fedprox",
    "run",
    "laplace_map",
    "mixture_map",
    "fedavg_fixed_point",
]


class ServerState(NamedTuple):
    """What the server holds between rounds: the prior's parameters and its precision."""

    w: np.ndarray  # (d,) for one server model, (K, d) for a mixture prior
    lam: float
    round: int = 0


@dataclass(frozen=True)
class FederatedAlgorithm:
    """A federated algorithm as two pure functions (FedJAX's ``FederatedAlgorithm``)."""

    name: str
    init: Callable[..., ServerState]
    apply: Callable[[ServerState, "linreg.FederatedLinReg"], tuple]


@dataclass(frozen=True)
class History:
    """The server trajectory of :func:`run`: ``w[t]`` and ``lam[t]`` after ``t`` rounds."""

    w: np.ndarray  # (rounds + 1, d) or (rounds + 1, K, d)
    lam: np.ndarray  # (rounds + 1,)
    phis: np.ndarray  # (rounds, S, d): what the clients sent in each round (FedPA: deltas)

    @property
    def final(self) -> np.ndarray:
        return self.w[-1]


def _check_server_lr(server_lr) -> float:
    return check_positive("server_lr", server_lr)


def _init(lam):
    def init(w0) -> ServerState:
        w0 = np.array(w0, dtype=float)
        if w0.ndim not in (1, 2):
            raise ValueError(f"w0 must be a vector (d,) or, for a mixture, (K, d); got {w0.shape}")
        return ServerState(w0, float(lam), 0)

    return init


def _step(w, target, server_lr):
    """Move the server towards the closed-form M-step ``target`` (Eq. 10-11)."""
    return w + server_lr * (target - w)


# --------------------------------------------------------------------------- exact EM


def exact_em(lam: float, learn_lam: bool = False, server_lr: float = 1.0) -> FederatedAlgorithm:
    """EM with the exact Gaussian E-step (Eq. 5) and the closed-form M-step (Eq. 6).

    M-step: ``w = mean_s m_s``; with ``learn_lam`` also
    ``lam = S d / sum_s (||m_s - w||^2 + tr Sigma_s)``, which makes it type-II maximum
    likelihood of ``(w, lam)``.  Every round increases Eq. 4 (for ``server_lr <= 1``).
    """
    check_positive("lam", lam)
    server_lr = _check_server_lr(server_lr)

    def apply(state: ServerState, data) -> tuple:
        w = as_vector("w", state.w, data.d)
        posts = [linreg.posterior(c, w, state.lam) for c in data.clients]
        means = np.array([m for m, _ in posts])
        w_new = _step(w, means.mean(axis=0), server_lr)
        lam_new = state.lam
        if learn_lam:
            spread = sum(np.sum((m - w_new) ** 2) + np.trace(C) for m, C in posts)
            lam_new = data.S * data.d / spread
        return ServerState(w_new, lam_new, state.round + 1), means

    return FederatedAlgorithm("exact_em", _init(lam), apply)


# --------------------------------------------------------------------------- hard EM


def laplace_map(client, w, lam: float, tol: float = 1e-12, max_iter: int = 10_000) -> np.ndarray:
    """Hard E-step under the Laplace prior (Eq. 43): ``argmin nll(phi) + lam ||phi - w||_1``.

    Exact coordinate descent on ``delta = phi - w`` (a lasso centred at ``w``); coordinates whose
    data pull is weaker than ``lam`` stay exactly at ``w_j``.
    """
    check_positive("lam", lam)
    w = as_vector("w", w, client.d)
    A, b = client.A, client.b
    delta = np.zeros(client.d)
    g = b - A @ w  # minus the gradient of the nll at phi = w + delta
    for _ in range(max_iter):
        biggest = 0.0
        for j in range(client.d):
            rho = g[j] + A[j, j] * delta[j]
            new = np.sign(rho) * max(abs(rho) - lam, 0.0) / A[j, j]
            change = new - delta[j]
            if change != 0.0:
                g -= A[:, j] * change
                delta[j] = new
                biggest = max(biggest, abs(change))
        if biggest < tol:
            break
    return w + delta


def mixture_map(client, ws, lam: float, tol: float = 1e-12, max_iter: int = 1_000) -> np.ndarray:
    """Hard E-step under the mixture prior (Eq. 48).

    The gradient of ``log sum_k N(phi; w_k, I/lam)`` is ``lam (sum_k r_k(phi) w_k - phi)``, so a
    stationary point is a Gaussian MAP centred at the responsibility-weighted centre.  Iterating
    ``phi <- map_estimate(client, sum_k r_k(phi) w_k, lam)`` increases the objective (a
    minorise-maximise step); it is started from every component and the best end point is kept.
    """
    prior = MixturePrior(lam)
    ws = as_matrix("w", ws, client.d)

    def value(phi):
        return -client.nll(phi) + prior.log_prob(phi, ws)

    best, best_val = None, -np.inf
    for k in range(ws.shape[0]):
        phi = linreg.map_estimate(client, ws[k], lam)
        for _ in range(max_iter):
            r = prior.responsibilities(phi[None, :], ws)[0]
            new = linreg.map_estimate(client, r @ ws, lam)
            done = np.max(np.abs(new - phi)) < tol
            phi = new
            if done:
                break
        val = value(phi)
        if val > best_val:
            best, best_val = phi, val
    return best


_E_STEPS = {
    GaussianPrior: lambda client, w, lam: linreg.map_estimate(client, w, lam),
    LaplacePrior: laplace_map,
    MixturePrior: mixture_map,
}


def hard_em(
    lam: float, prior: str = "gaussian", learn_lam: bool = False, server_lr: float = 1.0
) -> FederatedAlgorithm:
    """Hard-EM: MAP E-step (Eq. 7) and the prior's M-step (Eq. 8).

    ``prior`` is ``"gaussian"`` (server mean, Eq. 11: FedAvg with exact local solves, or FedProx
    run to convergence), ``"laplace"`` (server median, Eq. 46) or ``"mixture"`` (K server models,
    Eq. 50-52; pass ``w0`` of shape (K, d) to ``init``).  ``learn_lam`` (Gaussian only) also sets
    ``lam = S d / sum_s ||phi_s* - w||^2``: the hard-EM estimate, which ignores the posterior
    spread and runs off to infinity once the clients are pulled close to ``w``.
    """
    p = make_prior(prior, lam)
    server_lr = _check_server_lr(server_lr)
    if learn_lam and not isinstance(p, GaussianPrior):
        raise ValueError("learn_lam is available for the gaussian prior only")
    e_step = _E_STEPS[type(p)]

    def apply(state: ServerState, data) -> tuple:
        q = type(p)(state.lam)
        if isinstance(q, MixturePrior):
            w = as_matrix("w", state.w, data.d)
        else:
            w = as_vector("w", state.w, data.d)
        phis = np.array([e_step(c, w, state.lam) for c in data.clients])
        w_new = _step(w, q.m_step(phis, w), server_lr)
        lam_new = state.lam
        if learn_lam:
            spread = np.sum((phis - w_new) ** 2)
            lam_new = data.S * data.d / spread if spread > 0 else np.inf
            if not np.isfinite(lam_new) or lam_new > 1e200:
                raise FloatingPointError(
                    f"hard-EM's lam estimate diverged in round {state.round + 1}: every phi_s* "
                    "has collapsed onto w (the hard-EM objective has no finite maximiser in lam). "
                    "Start from a smaller lam, run fewer rounds, or use exact_em(learn_lam=True)."
                )
        return ServerState(w_new, lam_new, state.round + 1), phis

    return FederatedAlgorithm(f"hard_em[{prior}]", _init(lam), apply)


# --------------------------------------------------------------------------- FedAvg / FedProx


def _local_steps_algorithm(name, lam, K, lr, server_lr) -> FederatedAlgorithm:
    check_positive_int("K", K)
    check_positive("lr", lr)
    server_lr = _check_server_lr(server_lr)

    def apply(state: ServerState, data) -> tuple:
        w = as_vector("w", state.w, data.d)
        phis = np.array([linreg.local_gd(c, w, K, lr, lam) for c in data.clients])
        return ServerState(_step(w, phis.mean(axis=0), server_lr), state.lam, state.round + 1), phis

    return FederatedAlgorithm(name, _init(lam), apply)


def fedavg(K: int, lr: float, server_lr: float = 1.0) -> FederatedAlgorithm:
    """FedAvg: K local gradient steps from ``w`` (an implicit Gaussian prior, see
    :func:`emfl.linreg.effective_precision`), then the average (Eq. 11)."""
    return _local_steps_algorithm("fedavg", 0.0, K, lr, server_lr)


def fedprox(lam: float, K: int, lr: float, server_lr: float = 1.0) -> FederatedAlgorithm:
    """FedProx: hard-EM with an explicit Gaussian prior of precision ``lam > 0``; the E-step is
    approximated by K gradient steps on ``nll + lam/2 ||phi - w||^2``."""
    check_positive("lam", lam)
    return _local_steps_algorithm("fedprox", lam, K, lr, server_lr)


def fedavg_fixed_point(data, K: int, lr: float) -> np.ndarray:
    """The point FedAvg (K plain local steps, uniform average) converges to.

    Each client returns ``phi_hat_s + M_s (w - phi_hat_s)`` with ``M_s = (I - lr A_s)^K``, so the
    fixed point solves ``sum_s (I - M_s) w = sum_s (I - M_s) phi_hat_s``.  With ``K = 1`` this is
    pooled least squares; as ``K`` grows it tends to the mean of the local least-squares fits.
    """
    check_positive_int("K", K)
    check_positive("lr", lr)
    d = data.d
    H = np.zeros((d, d))
    g = np.zeros(d)
    for c in data.clients:
        I_M = np.eye(d) - np.linalg.matrix_power(np.eye(d) - lr * c.A, K)
        H += I_M
        g += I_M @ linreg.local_least_squares(c)
    return np.linalg.solve(H, g)


# --------------------------------------------------------------------------- running


def run(algorithm: FederatedAlgorithm, data, w0, rounds: int) -> History:
    """Run ``rounds`` rounds of ``algorithm`` from ``w0`` with every client taking part."""
    if not isinstance(algorithm, FederatedAlgorithm):
        raise TypeError(f"algorithm must be a FederatedAlgorithm (e.g. emfl.fedavg(...)); got {algorithm!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise ValueError(f"rounds must be a whole number >= 0; got {rounds!r}")
    state = algorithm.init(w0)
    ws, lams, phis = [state.w], [getattr(state, "lam", np.nan)], []
    for _ in range(rounds):
        state, sent = algorithm.apply(state, data)
        ws.append(state.w)
        lams.append(getattr(state, "lam", np.nan))
        phis.append(sent)
    phis = np.array(phis) if phis else np.zeros((0, data.S, data.d))
    return History(np.array(ws), np.array(lams), phis)
