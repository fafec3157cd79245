"""Settings declared once: a dataclass field made with :func:`setting` carries its help text, its
allowed values and its check, and everything else is generated from it: the command-line flags
(:func:`add_flags`, with the defaults in ``--help``), the checks that run when a config is made
(:func:`check_fields`) and the tables of settings a notebook prints (:func:`settings_of`).

The run settings (:class:`emfl.nn.config.RunConfig`) and every algorithm's ``Params`` are declared
this way.  A check raises ``ValueError`` with the sentence the command line prints.
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields

import numpy as np

__all__ = ["setting", "settings_of", "choices_of", "check_fields", "add_flags", "flag_name", "check_nonnegative", "check_positive",
           "check_rate", "check_whole", "check_choice", "whole", "positive"]


def setting(default, help: str, *, choices=None, check=None, cli: bool = True):
    """A field with its command-line help, its allowed values ``choices`` (a tuple, or a function
    that returns one, for a registry that can grow) and ``check``,
    a function ``check(name, value)`` that raises ValueError for a value it refuses.  ``cli=False``
    keeps the field off the generated flags (a setting the command line sets another way)."""
    metadata = {"help": help, "cli": cli}
    if choices is not None:
        metadata["choices"] = choices if callable(choices) else tuple(choices)
    if check is not None:
        metadata["check"] = check
    return field(default=default, metadata=metadata)


def settings_of(cls) -> list:
    """The settings of a dataclass: ``(name, default, help, choices)`` per field."""
    return [(f.name, f.default, f.metadata.get("help", ""), choices_of(f)) for f in fields(cls) if "help" in f.metadata]


def choices_of(f):
    """The allowed values of the field ``f`` now (None: any)."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def check_fields(obj) -> None:
    """Run every field's check and choices on the values ``obj`` holds (raises ValueError)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if "choices" in f.metadata and value != f.default:  # a declared default is allowed (model "": the task's)
            check_choice(f.name, value, choices_of(f))
        if "check" in f.metadata:
            f.metadata["check"](f.name, value)


def flag_name(name: str) -> str:
    """The command-line flag of a setting: ``client_lr`` -> ``--client-lr``."""
    return "--" + name.replace("_", "-")


def add_flags(parser, cls, defaults=None, skip=()) -> list:
    """Add a flag per setting of the dataclass ``cls`` (those with ``cli`` on, not in ``skip``) to
    ``parser`` (an argparse parser or group): its type from its default, its choices, its help.
    ``defaults`` (an instance) overrides the declared defaults.  Returns the names added."""
    added = []
    for f in fields(cls):
        if "help" not in f.metadata or not f.metadata.get("cli", True) or f.name in skip:
            continue
        default = getattr(defaults, f.name) if defaults is not None else f.default
        if default is MISSING:
            continue
        parser.add_argument(flag_name(f.name), dest=f.name, type=type(default), default=default,
                            choices=choices_of(f), help=f.metadata["help"])
        added.append(f.name)
    return added


# --------------------------------------------------------------------------- checks


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_nonnegative(name: str, value) -> None:
    if not (_is_number(value) and np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a number >= 0; got {value!r}")


def check_positive(name: str, value, hint: str = "") -> None:
    if not (_is_number(value) and np.isfinite(value) and value > 0):
        raise ValueError(hint or f"{name} must be a positive number; got {value!r}")


def check_rate(name: str, value) -> None:
    if not (_is_number(value) and 0 <= value < 1):
        raise ValueError(f"{name} must be a rate in [0, 1); got {value!r}")


def check_whole(name: str, value, least: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be a whole number >= {least}; got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(map(str, choices))}; got {value!r}")


def whole(least: int):
    """The check of a whole-number setting that is at least ``least``."""
    return lambda name, value: check_whole(name, value, least)


positive = check_positive
