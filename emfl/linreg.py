"""The toy world: federated linear regression drawn from the hierarchical model itself.

Server parameters ``w`` (d,), client parameters ``phi_s ~ N(w, I / lam)`` (Eq. 3), data
``y_s = X_s phi_s + noise`` with a client-specific noise variance ``sigma2_s``.  Because
everything is Gaussian, every quantity of the EM view has a closed form:

* the client posterior ``p(phi_s | D_s, w)`` (Eq. 5),
* the log marginal likelihood ``log p(D_s | w)`` (Eq. 3-4) and its gradient (Eq. 28-30),
* the MAP point of the hard E-step (Eq. 7),
* what K local gradient steps started at ``w`` compute, and the Gaussian prior they imply.

Notation: ``A_s = X_s^T X_s / sigma2_s`` and ``b_s = X_s^T y_s / sigma2_s`` are the natural
parameters of the likelihood, so ``-log p(D_s | phi) = phi^T A phi / 2 - b^T phi + const``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from emfl._checks import as_vector, check_covariance, check_finite, check_positive, check_positive_int

__all__ = [
    "Client",
    "FederatedLinReg",
    "make_federated_linreg",
    "held_out",
    "anisotropic_client",
    "posterior",
    "map_estimate",
    "log_marginal",
    "elbo",
    "grad_log_marginal",
    "objective",
    "ml_w",
    "objective_on_grid",
    "local_gd",
    "minibatch_grad",
    "local_gd_closed_form",
    "effective_precision",
    "local_least_squares",
    "pooled_least_squares",
]


@dataclass(frozen=True, eq=False)
class Client:
    """One client's data set ``D_s = (X, y)`` with known noise variance ``sigma2``."""

    X: np.ndarray
    y: np.ndarray
    sigma2: float = 1.0

    def __post_init__(self):
        X = np.asarray(self.X, dtype=float)
        y = np.asarray(self.y, dtype=float)
        if X.ndim != 2:
            raise ValueError(f"Client.X must be a 2-D array (n, d); got shape {X.shape}")
        if y.shape != (X.shape[0],):
            raise ValueError(
                f"Client.y must have shape ({X.shape[0]},) to match X {X.shape}; got {y.shape}"
            )
        check_finite("Client.X", X)
        check_finite("Client.y", y)
        check_positive("sigma2", self.sigma2)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "sigma2", float(self.sigma2))

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @cached_property
    def A(self) -> np.ndarray:
        """Likelihood precision ``X^T X / sigma2`` (the Hessian of the client loss)."""
        return self.X.T @ self.X / self.sigma2

    @cached_property
    def b(self) -> np.ndarray:
        """``X^T y / sigma2``."""
        return self.X.T @ self.y / self.sigma2

    def nll(self, phi) -> float:
        """Client loss ``-log p(D_s | phi)``, Gaussian noise."""
        r = self.y - self.X @ as_vector("phi", phi, self.d)
        return 0.5 * (r @ r / self.sigma2 + self.n * np.log(2 * np.pi * self.sigma2))

    def grad_nll(self, phi) -> np.ndarray:
        """Gradient of the client loss: ``A phi - b``."""
        return self.A @ phi - self.b

    def mse(self, phi) -> float:
        """Mean squared prediction error of the linear model ``phi`` on this client's data."""
        r = self.y - self.X @ as_vector("phi", phi, self.d)
        return float(r @ r / self.n)


@dataclass(frozen=True, eq=False)
class FederatedLinReg:
    """A federation of linear-regression clients, with the truth it was drawn from."""

    clients: tuple
    w_true: np.ndarray | None = None
    phi_true: np.ndarray | None = None
    lam_true: float | None = None
    cluster: np.ndarray | None = field(default=None)

    def __post_init__(self):
        clients = tuple(self.clients)
        if not clients:
            raise ValueError("a federation needs at least one client")
        d = clients[0].d
        if any(c.d != d for c in clients):
            raise ValueError("all clients must have the same number of features d")
        object.__setattr__(self, "clients", clients)

    @property
    def S(self) -> int:
        return len(self.clients)

    @property
    def d(self) -> int:
        return self.clients[0].d

    @property
    def n(self) -> np.ndarray:
        """Number of examples of each client."""
        return np.array([c.n for c in self.clients])

    def replace_client(self, s: int, client: Client) -> "FederatedLinReg":
        """A copy of the federation with client ``s`` swapped for ``client``."""
        clients = list(self.clients)
        clients[s] = client
        return replace(self, clients=tuple(clients))


def make_federated_linreg(
    S: int = 8,
    d: int = 2,
    lam_true: float = 1.0,
    n_range: tuple = (10, 60),
    sigma_range: tuple = (0.3, 1.5),
    w_true=None,
    centres=None,
    condition: float = 1.0,
    seed: int = 0,
) -> FederatedLinReg:
    """Draw a federation from the hierarchical model (Eq. 3), seeded.

    ``phi_s ~ N(w_true, I / lam_true)``; client ``s`` gets ``n_s`` examples (uniform integer in
    ``n_range``), features ``x ~ N(0, I)`` and a noise standard deviation uniform in
    ``sigma_range``.  With ``centres`` (K, d), client ``s`` belongs to cluster ``s % K`` and its
    ``phi_s`` is drawn around ``centres[s % K]`` instead (the mixture prior of Eq. 47).
    With ``condition > 1`` each client's features are stretched anisotropically: standard
    deviations log-spaced from 1 down to ``1 / sqrt(condition)`` along a random rotation of its
    own, so that clients' losses are elongated in different directions.
    """
    check_positive_int("S", S)
    check_positive_int("d", d)
    check_positive("lam_true", lam_true)
    check_positive("condition", condition)
    if condition < 1:
        raise ValueError(f"condition must be >= 1 (1 means isotropic features); got {condition}")
    n_lo, n_hi = (int(v) for v in n_range)
    if not 1 <= n_lo <= n_hi:
        raise ValueError(f"n_range must be (lo, hi) with 1 <= lo <= hi; got {n_range}")
    s_lo, s_hi = (float(v) for v in sigma_range)
    if not 0 < s_lo <= s_hi:
        raise ValueError(f"sigma_range must be (lo, hi) with 0 < lo <= hi; got {sigma_range}")
    rng = np.random.default_rng(seed)
    if centres is not None:
        centres = np.atleast_2d(np.asarray(centres, dtype=float))
        if centres.shape[1] != d:
            raise ValueError(f"centres must have shape (K, {d}); got {centres.shape}")
        cluster = np.arange(S) % centres.shape[0]
        means = centres[cluster]
        w_true = centres.mean(axis=0)
    else:
        w_true = rng.normal(size=d) if w_true is None else as_vector("w_true", w_true, d)
        cluster = None
        means = np.broadcast_to(w_true, (S, d))
    phi_true = means + rng.normal(size=(S, d)) / np.sqrt(lam_true)
    clients = []
    for s in range(S):
        n = int(rng.integers(n_lo, n_hi + 1))
        sigma = float(rng.uniform(s_lo, s_hi))
        X = rng.normal(size=(n, d))
        if condition > 1:
            R, _ = np.linalg.qr(rng.normal(size=(d, d)))
            X = (X * np.logspace(0, -0.5 * np.log10(condition), d)) @ R.T
        y = X @ phi_true[s] + sigma * rng.normal(size=n)
        clients.append(Client(X, y, sigma**2))
    return FederatedLinReg(tuple(clients), w_true, phi_true, float(lam_true), cluster)


def held_out(data: FederatedLinReg, n: int = 200, seed: int = 1) -> tuple:
    """Fresh test data for every client, from its own true ``phi_s`` and noise level."""
    check_positive_int("n", n)
    if data.phi_true is None:
        raise ValueError("held_out needs a federation that knows its phi_true (make_federated_linreg)")
    rng = np.random.default_rng(seed)
    out = []
    for c, phi in zip(data.clients, data.phi_true):
        X = rng.normal(size=(n, data.d))
        out.append(Client(X, X @ phi + np.sqrt(c.sigma2) * rng.normal(size=n), c.sigma2))
    return tuple(out)


def anisotropic_client(phi, scales, angle: float, n: int, sigma: float, seed: int = 0) -> Client:
    """A 2-D client whose loss is an elongated quadratic: features ``N(0, diag(scales^2))``
    rotated by ``angle`` (radians), labels ``X phi + N(0, sigma^2)``."""
    phi = as_vector("phi", phi, 2)
    scales = as_vector("scales", scales, 2)
    check_positive_int("n", n)
    check_positive("sigma", sigma)
    rng = np.random.default_rng(seed)
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    X = (rng.normal(size=(n, 2)) * scales) @ R.T
    return Client(X, X @ phi + sigma * rng.normal(size=n), sigma**2)


# --------------------------------------------------------------------------- closed forms


def posterior(client: Client, w, lam: float):
    """Local posterior ``p(phi_s | D_s, w) = N(mean, cov)`` (Eq. 5).

    Precision ``A + lam I``; mean ``(A + lam I)^{-1} (b + lam w)``.
    """
    check_positive("lam", lam)
    w = as_vector("w", w, client.d)
    P = client.A + lam * np.eye(client.d)
    mean = np.linalg.solve(P, client.b + lam * w)
    return mean, np.linalg.inv(P)


def map_estimate(client: Client, w, lam: float) -> np.ndarray:
    """Hard E-step ``phi_s* = argmax log p(D_s | phi) + log p(phi | w)`` (Eq. 7).

    For a Gaussian prior this is the posterior mean: the MAP of a Gaussian is its mean.
    """
    check_positive("lam", lam)
    w = as_vector("w", w, client.d)
    return np.linalg.solve(client.A + lam * np.eye(client.d), client.b + lam * w)


def elbo(client: Client, m, cov, w, lam: float) -> float:
    """The variational lower bound of ``log p(D_s | w)`` (Eq. 12, one client) for a Gaussian
    ``q(phi_s) = N(m, cov)``: ``E_q[log p(D_s | phi)] + E_q[log p(phi | w)] + H[q]``, in closed form.

    It equals ``log_marginal`` exactly when ``q`` is the posterior (the E-step closes the gap) and
    is below it by ``KL(q || posterior)`` otherwise."""
    check_positive("lam", lam)
    w = as_vector("w", w, client.d)
    m = as_vector("m", m, client.d)
    cov = check_covariance("cov", cov, client.d)
    n, d = client.n, client.d
    r = client.y - client.X @ m
    e_lik = -0.5 * (r @ r + np.trace(client.X @ cov @ client.X.T)) / client.sigma2 - n / 2 * np.log(2 * np.pi * client.sigma2)
    e_prior = -lam / 2 * ((m - w) @ (m - w) + np.trace(cov)) + d / 2 * np.log(lam / (2 * np.pi))
    _, logdet = np.linalg.slogdet(2 * np.pi * np.e * cov)
    return float(e_lik + e_prior + 0.5 * logdet)


def log_marginal(client: Client, w, lam: float) -> float:
    """Log marginal likelihood ``log p(D_s | w)`` (Eq. 3), in O(n d^2 + d^3).

    ``y ~ N(X w, sigma2 I + X X^T / lam)``; with the matrix determinant lemma and Woodbury,
    ``log det C = n log sigma2 + log det(A + lam I) - d log lam`` and
    ``r^T C^{-1} r = r^T r / sigma2 - g^T (A + lam I)^{-1} g`` with ``g = X^T r / sigma2``.
    """
    check_positive("lam", lam)
    w = as_vector("w", w, client.d)
    n, d = client.n, client.d
    r = client.y - client.X @ w
    g = client.X.T @ r / client.sigma2
    P = client.A + lam * np.eye(d)
    L = np.linalg.cholesky(P)
    h = np.linalg.solve(L, g)
    logdet_C = n * np.log(client.sigma2) + 2 * np.log(np.diag(L)).sum() - d * np.log(lam)
    quad = r @ r / client.sigma2 - h @ h
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet_C + quad))


def grad_log_marginal(client: Client, w, lam: float) -> np.ndarray:
    """``d/dw log p(D_s | w) = E_{p(phi|D_s,w)}[lam (phi - w)] = lam (mean - w)`` (Eq. 28-30)."""
    mean, _ = posterior(client, w, lam)
    return lam * (mean - np.asarray(w, dtype=float))


def objective(data: FederatedLinReg, w, lam: float) -> float:
    """The federated objective ``F(w) = sum_s log p(D_s | w)`` (Eq. 4)."""
    return float(sum(log_marginal(c, w, lam) for c in data.clients))


def ml_w(data: FederatedLinReg, lam: float) -> np.ndarray:
    """The maximiser of Eq. 4 over ``w`` at fixed ``lam``.

    ``F`` is quadratic in ``w``: its gradient ``sum_s lam P_s^{-1} (b_s - A_s w)`` with
    ``P_s = A_s + lam I`` vanishes at ``(sum_s P_s^{-1} A_s)^{-1} sum_s P_s^{-1} b_s``.
    """
    check_positive("lam", lam)
    d = data.d
    H = np.zeros((d, d))
    g = np.zeros(d)
    for c in data.clients:
        P = c.A + lam * np.eye(d)
        H += np.linalg.solve(P, c.A)
        g += np.linalg.solve(P, c.b)
    return np.linalg.solve(H, g)


def objective_on_grid(data: FederatedLinReg, lam: float, W) -> np.ndarray:
    """Eq. 4 at many points ``W`` (..., d) at once, through its exact quadratic form.

    ``F(w) = F(w_ML) - 1/2 (w - w_ML)^T H (w - w_ML)`` with ``H = sum_s lam P_s^{-1} A_s`` (the
    negative Hessian, constant in ``w``); used to draw contours quickly.
    """
    check_positive("lam", lam)
    W = np.asarray(W, dtype=float)
    if W.shape[-1] != data.d:
        raise ValueError(f"W must have last dimension d={data.d}; got shape {W.shape}")
    w_ml = ml_w(data, lam)
    H = sum(lam * np.linalg.solve(c.A + lam * np.eye(data.d), c.A) for c in data.clients)
    D = W - w_ml
    return objective(data, w_ml, lam) - 0.5 * np.einsum("...i,ij,...j->...", D, H, D)


def local_least_squares(client: Client) -> np.ndarray:
    """The client's own maximum-likelihood ``phi`` (the ``lam -> 0`` limit of Eq. 7)."""
    return np.linalg.solve(client.A, client.b)


def pooled_least_squares(data: FederatedLinReg) -> np.ndarray:
    """Centralised maximum likelihood with one shared ``phi = w`` (the ``lam -> inf`` limit)."""
    A = sum(c.A for c in data.clients)
    b = sum(c.b for c in data.clients)
    return np.linalg.solve(A, b)


# --------------------------------------------------------------------------- local steps


def minibatch_grad(client: Client, batch_size: int, rng: np.random.Generator):
    """A stochastic gradient oracle for the client loss ``-log p(D_s | phi)``.

    Each call draws ``batch_size`` examples uniformly with replacement and returns
    ``(n / B) X_b^T (X_b phi - y_b) / sigma2``, an unbiased estimate of ``A phi - b``."""
    check_positive_int("batch_size", batch_size)
    X, y, n, scale = client.X, client.y, client.n, client.n / (batch_size * client.sigma2)

    def grad(phi):
        idx = rng.integers(0, n, batch_size)
        Xb = X[idx]
        return scale * (Xb.T @ (Xb @ phi - y[idx]))

    return grad


def local_gd(client: Client, w, K: int, lr: float, lam: float = 0.0) -> np.ndarray:
    """K local gradient steps from ``phi = w`` on ``-log p(D_s | phi) + lam/2 ||phi - w||^2``.

    ``lam = 0`` is FedAvg's client update, ``lam > 0`` FedProx's.  As ``K`` grows (with a stable
    ``lr``) the result tends to the hard E-step of Eq. 7 (for ``lam > 0``).
    """
    check_positive_int("K", K)
    check_positive("lr", lr)
    if lam < 0:
        raise ValueError(f"lam must be >= 0 (0 means no proximal term); got {lam}")
    w = as_vector("w", w, client.d)
    phi = w.copy()
    for _ in range(K):
        phi = phi - lr * (client.A @ phi - client.b + lam * (phi - w))
    return phi


def local_gd_closed_form(client: Client, w, K: int, lr: float, lam: float = 0.0) -> np.ndarray:
    """The same K steps in closed form: ``phi_K = phi_hat + (I - lr H)^K (w - phi_hat)``.

    ``H = A + lam I`` and ``phi_hat = H^{-1} (b + lam w)`` is the minimiser of the local loss.
    """
    check_positive_int("K", K)
    w = as_vector("w", w, client.d)
    H = client.A + lam * np.eye(client.d)
    phi_hat = np.linalg.solve(H, client.b + lam * w)
    M = np.linalg.matrix_power(np.eye(client.d) - lr * H, K)
    return phi_hat + M @ (w - phi_hat)


def effective_precision(client: Client, K: int, lr: float) -> np.ndarray:
    """The Gaussian prior precision that K plain gradient steps from ``w`` imply.

    K steps of gradient descent on the client loss started at ``w`` land exactly on the MAP
    point under a prior ``N(w, Lambda^{-1})`` with (in the eigenbasis of ``A``, eigenvalue ``a``)
    ``Lambda = a (1 - lr a)^K / (1 - (1 - lr a)^K)`` (Santos 1996, the paper's reference [29]).
    For ``lr * a << 1/K`` every direction gets about ``1 / (K lr)``.
    Requires ``0 < lr < 1 / a_max`` so that each factor ``1 - lr a`` lies in (0, 1).
    """
    check_positive_int("K", K)
    check_positive("lr", lr)
    a, U = np.linalg.eigh(client.A)
    if a.min() <= 0:
        raise ValueError("effective_precision needs a full-rank client (n >= d, independent X)")
    if lr * a.max() >= 1:
        raise ValueError(
            f"lr={lr} is too large: need lr < 1 / a_max = {1 / a.max():.4g} so that every "
            "direction decays monotonically"
        )
    q = (1 - lr * a) ** K
    lam_eff = a * q / (1 - q)
    return (U * lam_eff) @ U.T
