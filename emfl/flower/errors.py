"""What a Flower run raises when it cannot start or go on, and the check that Flower is installed
(the ``flower`` extra is optional: ``import emfl.flower`` works without it)."""

from __future__ import annotations

__all__ = ["FlowerError", "require_flower"]


class FlowerError(RuntimeError):
    """A Flower run that cannot start or go on; the message says what to do."""


def require_flower():
    """Import ``flwr``, or say how to install it."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise FlowerError("Flower is not installed: pip install -e '.[flower]' (or pip install 'flwr[simulation]>=1.40,<2')") from None
    return flwr
