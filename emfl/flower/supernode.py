"""Flower's SuperNode, as ``flower-supernode`` runs it, with shorter waits.

``python -m emfl.flower.supernode ARGS`` is ``flower-supernode ARGS`` (the same code, flags and
protocol) except for two fixed waits in its loop (flwr 1.42, ``flwr.supernode.start_client_internal``):
it sleeps 3 s whenever it asks the SuperLink for a message and finds none, and it checks every
0.5 s whether its ClientApp has answered.  A round of ten clients on two nodes pays both several
times (the first at every round's start, the second after every client), which made a deployment's
round about 8 s longer than the engine's.  Here both waits are capped at ``EMFL_SUPERNODE_POLL``
seconds (default 0.05): the node asks the SuperLink for work up to 20 times a second while idle.

Only that module's view of :mod:`time` changes (its ``sleep`` is capped; everything else is
:mod:`time`'s).  A Flower whose SuperNode loop is not where flwr 1.42 has it runs unchanged.

Flower's object pulls (a message's payload, pulled by the SuperNode from the SuperLink, by a
ClientApp from its SuperNode, by the ServerApp from the SuperLink) retry after 1 s when the object
is not there yet, which it usually is a few milliseconds later: :func:`quick_pulls` makes them
retry after 20 ms (doubling up to 0.25 s) in the SuperNode, the node's worker and the ServerApp.
"""

from __future__ import annotations

import os
import sys
import time as _time

__all__ = ["CappedSleep", "patch", "quick_pulls", "PULLERS", "main"]


class CappedSleep:
    """The :mod:`time` module with ``sleep`` capped at ``cap`` seconds."""

    def __init__(self, cap: float):
        self.cap = float(cap)

    def sleep(self, seconds: float) -> None:
        _time.sleep(min(float(seconds), self.cap))

    def __getattr__(self, name):
        return getattr(_time, name)


def patch(cap: float) -> bool:
    """Cap the SuperNode loop's waits at ``cap`` seconds; False where this Flower has no such loop."""
    try:
        from flwr.supernode import start_client_internal as loop
    except ImportError:
        return False
    if getattr(loop, "time", None) is not _time:
        return False
    loop.time = CappedSleep(cap)
    return True


PULLERS = ("flwr.supercore.inflatable.inflatable_utils",  # a ClientApp's pull of its message
           "flwr.supernode.start_client_internal",  # a SuperNode's pull from the SuperLink
           "flwr.superlink.grid.http_grid")  # the ServerApp's pull of the replies


def quick_pulls(backoff: float = 0.02, cap: float = 0.25, where: tuple = PULLERS) -> list:
    """Make Flower's object pulls retry after ``backoff`` seconds (doubling up to ``cap``) instead of
    1 s (doubling up to 10 s): a message's objects are pulled as soon as the node or the
    SuperLink holds them, which is usually a few milliseconds after the first try.  Applies to
    this process, in the modules ``where`` (importing them: a short-lived ClientApp process names
    only the first); returns the modules changed."""
    import functools
    import importlib

    modules = []
    for name in (PULLERS[0], *[m for m in where if m != PULLERS[0]]):  # all imported before any is changed
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    if not modules or modules[0].__name__ != "flwr.supercore.inflatable.inflatable_utils":
        return []
    current = modules[0].pull_objects
    if getattr(current, "emfl_quick", False):  # an earlier call made it: patch the modules it did not
        original, quick = current.__wrapped__, current
    else:
        original = current

        @functools.wraps(original)
        def quick(*args, **kw):
            kw["initial_backoff"] = min(kw.get("initial_backoff", backoff), backoff)  # callers pass Flower's 1 s
            kw["backoff_cap"] = min(kw.get("backoff_cap", cap), cap)
            return original(*args, **kw)

        quick.emfl_quick = True

    changed = []
    for module in modules:
        if getattr(module, "pull_objects", None) is original:
            module.pull_objects = quick
            changed.append(module.__name__)
    return changed


def main() -> None:
    cap = float(os.environ.get("EMFL_SUPERNODE_POLL", "0.05"))
    if cap <= 0:
        raise SystemExit(f"EMFL_SUPERNODE_POLL must be a positive number of seconds; got {cap}")
    patch(cap)
    quick_pulls()
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
