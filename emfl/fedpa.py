"""FedPA: federated posterior averaging (Al-Shedivat et al., 2021).

FedAvg's client sends ``w - phi_s``: in the EM view (notebook 01) a point estimate of the
client posterior, i.e. an approximate posterior with identity covariance.  FedPA's client sends
``Delta_s = Sigma_s^{-1} (w - mu_s)`` where ``mu_s`` and ``Sigma_s`` summarise samples from its
local posterior; the server uses the average delta as a pseudo-gradient.  For Gaussian local
posteriors the fixed point ``sum_s q_s Sigma_s^{-1} (w - mu_s) = 0`` is the global posterior
mode ``(sum_s q_s Sigma_s^{-1})^{-1} sum_s q_s Sigma_s^{-1} mu_s`` (:func:`global_optimum`).

Pieces, each a pure function of flat parameter vectors (NumPy arrays or torch tensors):

* :func:`iasg` -- the local sampler: SGD with a burn-in, then samples that are averages of the
  SGD iterates over a window (iterate-averaged SGD);
* :func:`shrinkage_covariance` -- ``Sigma = rho_l I + (1 - rho_l) S`` with
  ``rho_l = 1 / (1 + (l - 1) rho)`` and ``S`` the unbiased sample covariance of the ``l`` samples;
* :func:`delta_exact` (forms ``Sigma``, O(d^3)) and :func:`delta_dp` (the dynamic programme,
  O(l^2 d) time, O(l d) memory, never forms ``Sigma``);
* :func:`client_update` -- one client's delta, FedPA's or (in the burn-in rounds) FedAvg's;
* :func:`fedpa` -- the federated algorithm on the toy world of :mod:`emfl.linreg`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from emfl import linreg
from emfl._checks import as_matrix, as_vector, check_nonnegative, check_positive, check_positive_int
from emfl.em import FederatedAlgorithm
from emfl.optim import ServerOptimizer, sgd

__all__ = [
    "rho_l",
    "shrinkage_covariance",
    "delta_exact",
    "delta_dp",
    "iasg",
    "client_update",
    "global_optimum",
    "update_bias_variance",
    "FedPAState",
    "fedpa",
    "fedavg_sgd",
]


def _copy(x):
    return x.clone() if hasattr(x, "clone") else x.copy()


def _dot(a, b):
    return (a * b).sum()


def _rows(samples) -> list:
    """The samples as a list of 1-D vectors, from an (l, d) array/tensor or a sequence."""
    rows = [samples[i] for i in range(len(samples))]
    if not rows:
        raise ValueError("FedPA needs at least one posterior sample (l >= 1)")
    if any(getattr(r, "ndim", 1) != 1 for r in rows):
        raise ValueError("samples must be an (l, d) array or a sequence of 1-D vectors")
    return rows


def _stack(rows):
    if hasattr(rows[0], "clone"):
        import torch

        return torch.stack(rows)
    return np.stack(rows)


def rho_l(l: int, rho: float) -> float:
    """The shrinkage weight on the identity: ``1 / (1 + (l - 1) rho)``."""
    check_positive_int("l", l)
    check_nonnegative("rho", rho)
    return 1.0 / (1.0 + (l - 1) * rho)


def shrinkage_covariance(samples, rho: float) -> np.ndarray:
    """``Sigma = rho_l I + (1 - rho_l) S`` (explicit d x d; for small d and for checking).

    ``S`` is the unbiased sample covariance of the ``l`` samples; ``rho = 0`` or ``l = 1`` give
    ``Sigma = I`` (FedAvg), a large ``rho`` trusts the samples."""
    X = as_matrix("samples", np.asarray(samples))
    l, d = X.shape
    r = rho_l(l, rho)
    S = np.cov(X, rowvar=False, ddof=1).reshape(d, d) if l > 1 else np.zeros((d, d))
    return r * np.eye(d) + (1 - r) * S


def delta_exact(samples, theta, rho: float) -> np.ndarray:
    """``Sigma^{-1} (theta - mean)`` by forming ``Sigma`` and solving: O(l d^2 + d^3)."""
    X = as_matrix("samples", np.asarray(samples))
    theta = as_vector("theta", np.asarray(theta), X.shape[1])
    return np.linalg.solve(shrinkage_covariance(X, rho), theta - X.mean(axis=0))


def delta_dp(samples, theta, rho: float):
    """``Sigma^{-1} (theta - mean)`` without forming ``Sigma``: O(l^2 d) time, O(l d) memory.

    Adds the samples one at a time; each new sample is a rank-one update of the shrinkage
    covariance, folded into the running solution by Sherman-Morrison, with the earlier rank-one
    directions ``V_k`` kept to orthogonalise the next one.  Works on NumPy arrays and on torch
    tensors (on any device)."""
    check_nonnegative("rho", rho)
    rows = _rows(samples)
    if theta.shape != rows[0].shape:
        raise ValueError(f"theta has shape {tuple(theta.shape)} but the samples have {tuple(rows[0].shape)}")
    l = len(rows)
    xbar = _copy(rows[0])
    d = theta - rows[0]
    V, C = [], []
    for t in range(2, l + 1):
        x_t = rows[t - 1]
        u = x_t - xbar
        v = _copy(u)
        for k in range(2, t):
            g_k = rho * (k - 1) / k
            v = v - (g_k * _dot(V[k - 2], u) / (1 + g_k * C[k - 2])) * V[k - 2]
        c = _dot(u, v)
        g = rho * (t - 1) / t
        d = d - (v / t) * (1 + g * (t * _dot(u, d) - c) / (1 + g * c))
        V.append(v)
        C.append(c)
        xbar = ((t - 1) * xbar + x_t) / t
    return (1 + (l - 1) * rho) * d


def iasg(grad, x0, lr: float, burn_in: int, num_samples: int, steps_per_sample: int, momentum: float = 0.0):
    """Iterate-averaged SGD: ``burn_in`` SGD steps, then ``num_samples`` samples, each the
    average of the iterates over ``steps_per_sample`` further steps.

    ``grad(x)`` returns a stochastic gradient at ``x`` (the caller owns its randomness).
    Returns ``(samples, x_last)``: samples stacked as (l, d), and the final iterate (what FedAvg
    would send).  With windows of one local epoch the samples' covariance approximates the local
    posterior's (Mandt et al., 2017)."""
    check_positive("lr", lr)
    if isinstance(burn_in, bool) or int(burn_in) != burn_in or burn_in < 0:
        raise ValueError(f"burn_in must be a whole number >= 0; got {burn_in!r}")
    check_positive_int("num_samples", num_samples)
    check_positive_int("steps_per_sample", steps_per_sample)
    check_nonnegative("momentum", momentum)
    x = _copy(x0)
    buf = x * 0

    def step(x, buf):
        buf = momentum * buf + grad(x)
        return x - lr * buf, buf

    for _ in range(int(burn_in)):
        x, buf = step(x, buf)
    samples = []
    for _ in range(num_samples):
        acc = x * 0
        for _ in range(steps_per_sample):
            x, buf = step(x, buf)
            acc = acc + x
        samples.append(acc / steps_per_sample)
    return _stack(samples), x


def client_update(grad, theta, lr, burn_in, num_samples, steps_per_sample, rho, momentum=0.0, mode="fedpa"):
    """One client's delta from the server parameters ``theta``.

    ``mode="fedpa"``: run :func:`iasg` and return :func:`delta_dp` of its samples.
    ``mode="fedavg"``: run the same number of SGD steps and return ``theta - x_last`` (FedAvg's
    delta, used in FedPA's burn-in rounds)."""
    if mode not in ("fedpa", "fedavg"):
        raise ValueError(f"mode must be 'fedpa' or 'fedavg'; got {mode!r}")
    samples, x_last = iasg(grad, theta, lr, burn_in, num_samples, steps_per_sample, momentum)
    if mode == "fedavg":
        return theta - x_last
    return delta_dp(samples, theta, rho)


def global_optimum(As, mus, q=None) -> np.ndarray:
    """Minimiser of ``sum_i q_i 1/2 (x - mu_i)^T A_i (x - mu_i)``:
    ``(sum_i q_i A_i)^{-1} sum_i q_i A_i mu_i`` (uniform ``q`` by default)."""
    As = [np.asarray(A, dtype=float) for A in As]
    mus = [np.asarray(m, dtype=float) for m in mus]
    if len(As) != len(mus) or not As:
        raise ValueError("global_optimum needs one A_i per mu_i, at least one of each")
    q = np.ones(len(As)) if q is None else as_vector("q", q, len(As))
    H = sum(qi * A for qi, A in zip(q, As))
    g = sum(qi * A @ m for qi, A, m in zip(q, As, mus))
    return np.linalg.solve(H, g)


def update_bias_variance(updates, ideal):
    """Bias and variance of repeated stochastic updates against an ideal update, after the best
    single rescaling (i.e. with the best server learning rate for each method).

    ``updates`` (R, d) are R seeded repetitions of a server update, ``ideal`` (d,) the update the
    server should make.  With ``c = <mean, ideal> / <mean, mean>``:
    ``bias = ||c mean - ideal|| / ||ideal||`` and
    ``variance = c^2 mean_r ||u_r - mean||^2 / ||ideal||^2``.  Returns ``(bias, variance, c)``."""
    U = as_matrix("updates", updates)
    ideal = as_vector("ideal", ideal, U.shape[1])
    norm2 = float(ideal @ ideal)
    if norm2 == 0:
        raise ValueError("the ideal update is zero: measure away from the optimum")
    mean = U.mean(axis=0)
    mm = float(mean @ mean)
    c = float(mean @ ideal) / mm if mm > 0 else 0.0
    bias = float(np.linalg.norm(c * mean - ideal) / np.sqrt(norm2))
    variance = float(c**2 * np.mean(np.sum((U - mean) ** 2, axis=1)) / norm2)
    return bias, variance, c


# --------------------------------------------------------------------------- on the toy world


class FedPAState(NamedTuple):
    w: np.ndarray
    opt_state: Any
    round: int = 0
    lam: float = float("nan")  # no prior precision: FedPA's clients sample their own posterior


def fedpa(
    lr: float,
    num_samples: int,
    steps_per_sample: int,
    burn_in: int = 0,
    rho: float = 1.0,
    batch_size: int = 5,
    server_opt: ServerOptimizer | None = None,
    fedavg_rounds: int = 0,
    momentum: float = 0.0,
    seed: int = 0,
) -> FederatedAlgorithm:
    """FedPA on a :class:`~emfl.linreg.FederatedLinReg` (every client takes part every round).

    Each client runs minibatch SGD on its negative log-likelihood from the server's ``w``
    (:func:`emfl.linreg.minibatch_grad`), draws ``num_samples`` IASG samples and sends
    :func:`delta_dp`; the server feeds the mean delta to ``server_opt`` (default: SGD with
    lr 1).  The first ``fedavg_rounds`` rounds run in FedAvg's regime (``w - x_last``).
    What :func:`emfl.em.run` records as sent by the clients are their deltas.
    Client randomness is seeded by ``(seed, round, client)``."""
    check_positive("lr", lr)
    check_positive_int("num_samples", num_samples)
    check_positive_int("steps_per_sample", steps_per_sample)
    check_nonnegative("rho", rho)
    check_positive_int("batch_size", batch_size)
    if isinstance(fedavg_rounds, bool) or int(fedavg_rounds) != fedavg_rounds or fedavg_rounds < 0:
        raise ValueError(f"fedavg_rounds must be a whole number >= 0; got {fedavg_rounds!r}")
    opt = sgd(1.0) if server_opt is None else server_opt
    if not isinstance(opt, ServerOptimizer):
        raise TypeError("server_opt must be an emfl.optim.ServerOptimizer, e.g. emfl.optim.sgd(0.5)")

    def init(w0) -> FedPAState:
        w0 = np.array(w0, dtype=float)
        return FedPAState(w0, opt.init(w0), 0)

    def apply(state: FedPAState, data) -> tuple:
        w = as_vector("w", state.w, data.d)
        mode = "fedavg" if state.round < fedavg_rounds else "fedpa"
        deltas = []
        for s, c in enumerate(data.clients):
            rng = np.random.default_rng([seed, state.round, s])
            grad = linreg.minibatch_grad(c, batch_size, rng)
            deltas.append(client_update(grad, w, lr, burn_in, num_samples, steps_per_sample, rho, momentum, mode))
        deltas = np.array(deltas)
        step, opt_state = opt.update(deltas.mean(axis=0), state.opt_state)
        return FedPAState(w - step, opt_state, state.round + 1), deltas

    return FederatedAlgorithm("fedpa", init, apply)


def fedavg_sgd(lr, local_steps, batch_size=5, server_opt=None, momentum=0.0, seed=0) -> FederatedAlgorithm:
    """FedAvg with minibatch SGD clients: FedPA with every round in FedAvg's regime, so that the
    two see exactly the same gradients."""
    return fedpa(lr, 1, local_steps, 0, 0.0, batch_size, server_opt, fedavg_rounds=np.iinfo(np.int64).max,
                 momentum=momentum, seed=seed)
