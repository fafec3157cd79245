"""Server optimisers as pairs of pure functions (optax style), for NumPy arrays and torch tensors.

``opt.init(params) -> state`` and ``opt.update(grad, state) -> (step, state)``; the server then
sets ``params = params - step``.  ``grad`` is the server's pseudo-gradient, e.g. the average
client delta ``mean_s (w - phi_s)`` of FedAvg or ``mean_s Sigma_s^{-1} (w - mu_s)`` of FedPA.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from emfl._checks import check_nonnegative, check_positive

__all__ = ["ServerOptimizer", "sgd", "adam", "adamax", "make_optimizer", "OPTIMIZERS"]


class ServerOptimizer(NamedTuple):
    init: Callable[[Any], Any]
    update: Callable[[Any, Any], tuple]


def _zeros_like(x):
    return x * 0


def sgd(lr: float, momentum: float = 0.0) -> ServerOptimizer:
    """``step = lr * m`` with ``m = momentum * m + grad`` (plain SGD for ``momentum = 0``).

    With ``lr = 1`` and no momentum, FedAvg's pseudo-gradient step is the average (Eq. 11)."""
    check_positive("lr", lr)
    check_nonnegative("momentum", momentum)
    if momentum >= 1:
        raise ValueError(f"momentum must be < 1; got {momentum}")

    def init(params):
        return (_zeros_like(params),)

    def update(grad, state):
        (m,) = state
        m = momentum * m + grad
        return lr * m, (m,)

    return ServerOptimizer(init, update)


def _check_adam_args(lr, b1, b2, eps):
    check_positive("lr", lr)
    for name, b in (("b1", b1), ("b2", b2)):
        if not 0 <= b < 1:
            raise ValueError(f"{name} must be in [0, 1); got {b}")
    check_positive("eps", eps)


def _init_moments(params):
    return (_zeros_like(params), _zeros_like(params), 0)


def adam(lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> ServerOptimizer:
    """Adam (Kingma and Ba) on the pseudo-gradient, as the EM paper's server uses."""
    _check_adam_args(lr, b1, b2, eps)

    def update(grad, state):
        m, v, t = state
        t += 1
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return lr * m_hat / (v_hat**0.5 + eps), (m, v, t)

    return ServerOptimizer(_init_moments, update)


def adamax(lr: float = 2e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> ServerOptimizer:
    """Adamax (Adam with the infinity norm), which FedSparse uses for its thresholds."""
    _check_adam_args(lr, b1, b2, eps)

    def update(grad, state):
        m, u, t = state
        t += 1
        m = b1 * m + (1 - b1) * grad
        u = _maximum(b2 * u, abs(grad) + eps)
        return lr / (1 - b1**t) * m / u, (m, u, t)

    return ServerOptimizer(_init_moments, update)


def _maximum(a, b):
    if hasattr(a, "clone"):
        import torch

        return torch.maximum(a, b)
    import numpy as np

    return np.maximum(a, b)


_OPTIMIZERS = {"sgd": sgd, "adam": adam, "adamax": adamax}
OPTIMIZERS = tuple(_OPTIMIZERS)  # their names


def make_optimizer(name: str, **kwargs) -> ServerOptimizer:
    """A server optimiser by name: one of ``OPTIMIZERS`` (sgd, adam, adamax)."""
    try:
        factory = _OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown server optimiser {name!r}; choose one of {', '.join(_OPTIMIZERS)}") from None
    return factory(**kwargs)
