"""The algorithms of the engine, one module each, and the registry that names them.

Every module implements the protocol of :mod:`emfl.nn.algorithms.base` (the server's message,
the client's E-step, its message back, the server's M-step) and names its prior and equations in
its docstring.  ``register`` adds one: its name becomes an ``--algo`` choice, its ``Params``
fields become flags, and its ``PRESETS`` become ``--algo NAME-LEVEL`` choices.
"""

from __future__ import annotations

from emfl.nn.algorithms import feddrop, fedavg, fedl1, fednova, fedpa, fedprox, fedspa, fedsparse, scaffold
from emfl.nn.algorithms.base import Algorithm

__all__ = ["ALGORITHMS", "PRESETS", "register", "unregister", "get", "Algorithm"]

ALGORITHMS: dict = {}  # name -> Algorithm subclass
PRESETS: dict = {}  # preset name -> {"algo": name, setting: value, ...}


def register(algorithm: type) -> type:
    """Add ``algorithm`` (an :class:`~emfl.nn.algorithms.base.Algorithm` subclass) and its presets."""
    if not (isinstance(algorithm, type) and issubclass(algorithm, Algorithm) and algorithm.name):
        raise ValueError("register needs an Algorithm subclass with a name")
    if algorithm.name in ALGORITHMS or algorithm.name in PRESETS:
        raise ValueError(f"an algorithm or preset named {algorithm.name!r} is registered already")
    ALGORITHMS[algorithm.name] = algorithm
    for level, settings in algorithm.PRESETS.items():
        PRESETS[f"{algorithm.name}-{level}"] = {"algo": algorithm.name, **settings}
    return algorithm


def unregister(name: str) -> None:
    """Remove an algorithm and its presets (for tests that register one of their own)."""
    ALGORITHMS.pop(name, None)
    for preset in [k for k, v in PRESETS.items() if v["algo"] == name]:
        del PRESETS[preset]


def get(name: str) -> type:
    """The algorithm registered as ``name``."""
    try:
        return ALGORITHMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}") from None


register(fedavg.FedAvg)
register(fedprox.FedProx)
register(fedpa.FedPA)
register(fedsparse.FedSparse)
register(fedl1.FedL1)
register(feddrop.FedDrop)
register(scaffold.Scaffold)
register(fedspa.FedSpa)
register(fednova.FedNova)
