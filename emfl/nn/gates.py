"""Gates of FedSparse's spike-and-slab prior: hard-concrete relaxations and learned thresholds.

Every group ``g`` of weights (a conv output filter, an fc output neuron) has a binary gate
``z_g``.  The server's prior keeps it on with probability ``theta_g``, a client's posterior with
``pi_sg``.  Both are parametrised by a learned threshold on the group's norm:

    theta_g = sigmoid((||w_g|| - tau_g) / T),   tau_g = softplus(v_g),

with the weights detached inside the sigmoid and ``T = 0.001``, so a group stays on while its
norm exceeds its threshold (paper, Section 3.2 and Appendix H).

For the local loss the Bernoulli gate is relaxed to a hard-concrete one (Louizos, Welling and
Kingma, 2018) whose probability of being non-zero equals ``pi``: with
``gamma = -0.1, zeta = 1.1, beta = 2/3``, ``P(z > 0) = sigmoid(log_alpha - beta log(-gamma / zeta))``.
The upload uses exact binary samples ``z ~ Bern(pi)``.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = [
    "GAMMA", "ZETA", "BETA", "T_DEFAULT",
    "hard_concrete_sample", "hard_concrete_prob_nonzero", "hard_concrete_test_gate", "log_alpha_for",
    "gate_logit", "gate_prob", "init_threshold", "softplus_inverse", "gate_cross_entropy", "server_v_gradient",
]

GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0
T_DEFAULT = 1e-3
_SHIFT = BETA * math.log(-GAMMA / ZETA)  # beta log(-gamma / zeta), about -1.5986


def hard_concrete_sample(log_alpha: torch.Tensor, generator=None, eps: float = 1e-6) -> torch.Tensor:
    """One reparametrised hard-concrete sample per entry of ``log_alpha``, in [0, 1]."""
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype, device="cpu")
    u = u.to(log_alpha.device).clamp(eps, 1 - eps)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def hard_concrete_prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    """``P(z > 0) = sigmoid(log_alpha - beta log(-gamma / zeta))``: the relaxation's CDF at 0."""
    return torch.sigmoid(log_alpha - _SHIFT)


def hard_concrete_test_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    """The deterministic gate used at test time: ``clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def log_alpha_for(pi: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The ``log_alpha`` whose hard-concrete gate is non-zero with probability ``pi``."""
    pi = pi.clamp(eps, 1 - eps)
    return torch.log(pi) - torch.log1p(-pi) + _SHIFT


def gate_logit(norms: torch.Tensor, v: torch.Tensor, T: float = T_DEFAULT) -> torch.Tensor:
    """``(||w_g|| - softplus(v_g)) / T``, the logit of theta (or pi), with the norms detached.
    In float32 ``sigmoid`` of it is exactly 1 past about 16.6 and its complement exactly 0;
    ``sigmoid(-logit)`` and ``logsigmoid`` keep them (``theta_space = "logit"``)."""
    if T <= 0:
        raise ValueError(f"the temperature T must be > 0; got {T}")
    return (norms.detach() - F.softplus(v)) / T


def gate_prob(norms: torch.Tensor, v: torch.Tensor, T: float = T_DEFAULT) -> torch.Tensor:
    """``sigmoid((||w_g|| - softplus(v_g)) / T)`` with the norms detached (theta or pi)."""
    return torch.sigmoid(gate_logit(norms, v, T))


def softplus_inverse(tau: torch.Tensor) -> torch.Tensor:
    """``v`` with ``softplus(v) = tau`` (tau > 0), computed stably."""
    if (tau <= 0).any():
        raise ValueError("softplus_inverse needs tau > 0")
    return tau + torch.log(-torch.expm1(-tau))


def init_threshold(norms: torch.Tensor, theta0: float = 0.99, T: float = T_DEFAULT, min_tau: float = 1e-6) -> torch.Tensor:
    """``v`` such that every gate starts on with probability ``theta0`` (0.99: a dense model):
    ``tau = ||w_g|| - T logit(theta0)``, kept above ``min_tau``."""
    if not 0 < theta0 < 1:
        raise ValueError(f"theta0 must be in (0, 1); got {theta0}")
    tau = (norms.detach() - T * math.log(theta0 / (1 - theta0))).clamp_min(min_tau)
    return softplus_inverse(tau)


def gate_cross_entropy(pi: torch.Tensor, theta: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``sum_g pi_g log theta_g + (1 - pi_g) log(1 - theta_g)`` (Eq. 38): the client's expected
    log prior of its gates; the local objective adds it (scaled by 1e-4 in the paper)."""
    theta = theta.clamp(eps, 1 - eps)
    return (pi * torch.log(theta) + (1 - pi) * torch.log1p(-theta)).sum()


def server_v_gradient(z: torch.Tensor, theta: torch.Tensor, v: torch.Tensor, T: float = T_DEFAULT,
                      one_minus_theta: torch.Tensor | None = None) -> torch.Tensor:
    """One client's contribution to the server's threshold gradient, for a descent optimiser:
    ``(z (1 - theta) - (1 - z) theta) sigmoid(v) / T`` (Algorithm 1; ``z`` may be the client's
    ``pi``, Eq. 22's expectation).  ``one_minus_theta``: ``1 - theta`` computed without the
    float32 round-off of ``1 - sigmoid`` (``sigmoid(-logit)``); default ``1 - theta``.

    It is the gradient in ``v`` of ``-log Bern(z; theta)`` with
    ``theta = sigmoid((||w|| - softplus(v)) / T)`` (``d softplus(v) / dv = sigmoid(v)``).
    Algorithm 1 writes its negative because it ascends the log-likelihood.  A descent step lowers
    ``v`` (the threshold) where a client kept the gate on, raising ``theta``, and raises it where
    the client switched the gate off."""
    off = 1 - theta if one_minus_theta is None else one_minus_theta
    return (z * off - (1 - z) * theta) * torch.sigmoid(v) / T
