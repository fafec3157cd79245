"""Priors ``p(phi_s | server parameters)`` and the server M-steps they imply.

In the EM view of federated learning the server holds the parameters of a prior over every
client's parameters ``phi_s``.  Hard-EM alternates a client E-step (the MAP ``phi_s*``, Eq. 7)
with a server M-step that maximises ``sum_s log p(phi_s* | server parameters)`` (Eq. 8).
The choice of prior decides the server:

=============  ==========================================  =========================
prior          ``p(phi | params)``                          M-step (server)
=============  ==========================================  =========================
``gaussian``   ``N(w, I / lam)`` (Eq. 3)                    mean (Eq. 11): FedAvg
``laplace``    ``prod_j lam/2 exp(-lam |phi_j - w_j|)``     median (Eq. 46)
               (Eq. 42)
``mixture``    ``1/K sum_k N(w_k, I / lam)`` (Eq. 47)       responsibility-weighted
                                                            means (Eq. 50-52)
=============  ==========================================  =========================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from emfl._checks import as_matrix, as_vector, check_positive

__all__ = ["GaussianPrior", "LaplacePrior", "MixturePrior", "make_prior", "PRIORS"]


@dataclass(frozen=True)
class GaussianPrior:
    """``p(phi | w) = N(w, I / lam)`` (Eq. 3); the server parameters are ``w`` (d,)."""

    lam: float
    name = "gaussian"

    def __post_init__(self):
        check_positive("lam", self.lam)

    def log_prob(self, phi, w) -> float:
        """``log N(phi; w, I / lam)``."""
        phi = as_vector("phi", phi)
        w = as_vector("w", w, phi.shape[0])
        d = phi.shape[0]
        return float(0.5 * d * np.log(self.lam / (2 * np.pi)) - 0.5 * self.lam * np.sum((phi - w) ** 2))

    def m_step(self, phis, params=None, weights=None) -> np.ndarray:
        """``argmax_w sum_s lam_s log N(phi_s; w, I / lam_s)``: the (weighted) mean (Eq. 11).

        With equal precisions this is FedAvg's plain average; ``weights`` proportional to the
        client sizes (a prior precision ``lam_s`` proportional to ``N_s``) gives FedAvg's
        example-weighted average.
        """
        phis = as_matrix("phis", phis, min_rows=1)
        if weights is None:
            return phis.mean(axis=0)
        weights = as_vector("weights", weights, phis.shape[0])
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return weights @ phis / weights.sum()


@dataclass(frozen=True)
class LaplacePrior:
    """``p(phi | w) = prod_j lam/2 exp(-lam |phi_j - w_j|)`` (Eq. 42); parameters ``w`` (d,)."""

    lam: float
    name = "laplace"

    def __post_init__(self):
        check_positive("lam", self.lam)

    def log_prob(self, phi, w) -> float:
        phi = as_vector("phi", phi)
        w = as_vector("w", w, phi.shape[0])
        return float(phi.shape[0] * np.log(self.lam / 2) - self.lam * np.abs(phi - w).sum())

    def m_step(self, phis, params=None) -> np.ndarray:
        """``argmax_w sum_s -lam |phi_sj - w_j|``: the coordinate-wise median (Eq. 45-46)."""
        return np.median(as_matrix("phis", phis, min_rows=1), axis=0)


@dataclass(frozen=True)
class MixturePrior:
    """``p(phi | w_{1:K}) = 1/K sum_k N(w_k, I / lam)`` (Eq. 47); parameters ``w`` (K, d)."""

    lam: float
    name = "mixture"

    def __post_init__(self):
        check_positive("lam", self.lam)

    def _log_components(self, phis, ws) -> np.ndarray:
        """``log (1/K) N(phi_s; w_k, I / lam)`` for every client s and component k: (S, K)."""
        phis = as_matrix("phis", phis)
        ws = as_matrix("w", ws, phis.shape[1])
        K, d = ws.shape
        sq = ((phis[:, None, :] - ws[None, :, :]) ** 2).sum(-1)
        return 0.5 * d * np.log(self.lam / (2 * np.pi)) - np.log(K) - 0.5 * self.lam * sq

    def log_prob(self, phi, ws) -> float:
        """``log 1/K sum_k N(phi; w_k, I / lam)``."""
        return float(logsumexp(self._log_components(np.atleast_2d(phi), ws), axis=1)[0])

    def responsibilities(self, phis, ws) -> np.ndarray:
        """``p(z = k | phi_s, w_{1:K}, lam)`` (Eq. 51), shape (S, K); rows sum to one."""
        logc = self._log_components(phis, ws)
        return np.exp(logc - logsumexp(logc, axis=1, keepdims=True))

    def m_step(self, phis, params) -> np.ndarray:
        """``w_k = sum_s r_sk phi_s / sum_s r_sk`` with responsibilities at the old ``w_{1:K}``
        (Eq. 52).  A component that no client claims keeps its old value."""
        phis = as_matrix("phis", phis, min_rows=1)
        ws = as_matrix("w", params, phis.shape[1])
        r = self.responsibilities(phis, ws)
        mass = r.sum(axis=0)
        new = ws.copy()
        claimed = mass > 1e-12
        new[claimed] = (r[:, claimed].T @ phis) / mass[claimed, None]
        return new


PRIORS = {p.name: p for p in (GaussianPrior, LaplacePrior, MixturePrior)}


def make_prior(name: str, lam: float):
    """The prior called ``name`` (one of ``PRIORS``) with precision ``lam``."""
    try:
        cls = PRIORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown prior {name!r}; choose one of {', '.join(sorted(PRIORS))}"
        ) from None
    return cls(lam)
