"""Everything a run depends on: :class:`RunConfig`, the run settings every algorithm shares plus
the hyperparameters of the one it runs (its module's ``Params``), and :func:`make_config` for
presets.

The config reads flat, as the JSON histories store it: ``RunConfig(algo="fedsparse", lam0=5e-5)``,
``config.lam0``, ``config.to_dict()["lam0"]``.  A setting the algorithm does not have is an error
that names the algorithms that have it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = ["RunConfig", "make_config", "TASKS", "GENERIC_FIELDS", "PRECISIONS", "INPUTS"]

PRECISIONS = ("float32", "float64")
INPUTS = ("standard", "unit")  # how pixels reach the model: (x / 255 - mean) / std per channel, or x / 255

# each task's defaults, and the models its inputs fit (the 12-bit task's inputs are too small for a conv net)
TASKS = {"cifar10": {"batch_size": 64, "model": "lenet5"}, "femnist": {"batch_size": 20, "model": "lenet5"},
         "bits": {"batch_size": 32, "model": "mlp-tanh", "models": ("mlp-tanh",)}}


@dataclass(init=False)
class RunConfig:
    """Everything a run depends on; stored in its checkpoint and its JSON history.

    ``RunConfig(**settings)`` takes the run settings below and the algorithm's own
    hyperparameters by name (see ``python -m emfl run --help``); ``params`` holds the latter."""

    task: str = "cifar10"
    algo: str = "fedavg"
    model: str = ""  # "": the task's default (lenet5 for CIFAR-10 and FEMNIST, mlp-tanh for bits)
    rounds: int = 100
    seed: int = 0
    clients_per_round: int = 10
    local_epochs: int = 1
    batch_size: int = 0  # 0: the task's default (64 for CIFAR-10, 20 for FEMNIST)
    client_lr: float = 0.05
    server_opt: str = "adam"
    server_lr: float = 1e-3
    alpha: float = 1.0  # CIFAR-10: Dirichlet concentration (Hsu et al.'s convention)
    inputs: str = "standard"  # pixels standardised per channel with the training set's statistics, or "unit": x / 255 in [0, 1]
    test_split: str = "matched"  # CIFAR-10 shard test sets: "matched" to the shard's classes, or "disjoint"
    num_shards: int = 100  # CIFAR-10
    shard_size: int = 500  # CIFAR-10
    max_writers: int = 0  # FEMNIST: keep the first k writers (0: all)
    eval_every: int = 10
    checkpoint_every: int = 1  # a kill -9 loses at most this many rounds
    device: str = "auto"
    client_batching: str = "auto"  # loop | vmap | auto (vmap on CUDA when it applies, else loop)
    client_compute: str = "sliced"  # sliced: clients train the model cut to its surviving units; dense: masked
    precision: str = "float32"  # float64: every weight, message and batch in double precision (for tests
    # that compare two computations of the same maths beyond the CPU's float32 round-off)
    preset: str = ""  # the preset name the run was asked for, "" for none
    params: Any = None  # the algorithm's hyperparameters: an instance of its module's Params

    # fields that may differ between a checkpoint and the run that resumes it
    RESUMABLE = ("rounds", "eval_every", "checkpoint_every", "device", "client_batching", "client_compute",
                 "preset")

    def __init__(self, **settings):
        from emfl.nn import algorithms

        for f in fields(RunConfig):
            if f.name != "params":
                setattr(self, f.name, settings.pop(f.name, f.default))
        params = settings.pop("params", None)
        self._check_run_settings()
        algorithm = algorithms.get(self.algo)
        self.params = _make_params(algorithm, params, settings)
        algorithm.check(self)
        if self.preset:
            if self.preset not in algorithms.PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(algorithms.PRESETS)}")
            fixed = algorithms.PRESETS[self.preset]
            own = self.to_dict()
            clash = [f"{k} = {own.get(k)!r}" for k, v in fixed.items() if own.get(k) != v]
            if clash:
                raise ValueError(f"preset {self.preset} sets {_settings(fixed)}, but the config has {', '.join(clash)}")
        if self.batch_size == 0:
            self.batch_size = TASKS[self.task]["batch_size"]
        if not self.model:
            self.model = TASKS[self.task]["model"]
        fits = TASKS[self.task].get("models")
        if fits and self.model not in fits:
            raise ValueError(f"the {self.task} task's inputs do not fit the model {self.model}: pass --model "
                             f"{' or '.join(fits)} (or leave --model out)")

    def _check_run_settings(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        for name in ("rounds", "clients_per_round", "local_epochs", "eval_every", "checkpoint_every",
                     "num_shards", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1; got {value!r}")
        for name in ("batch_size", "max_writers", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0; got {value!r}")
        for name in ("client_lr", "server_lr", "alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be {' or '.join(INPUTS)}; got {self.inputs!r}")
        if self.test_split not in ("matched", "disjoint"):
            raise ValueError(f"test_split must be matched or disjoint; got {self.test_split!r}")
        if self.client_batching not in ("auto", "loop", "vmap"):
            raise ValueError(f"client_batching must be auto, loop or vmap; got {self.client_batching!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be float32 or float64; got {self.precision!r}")
        if self.client_compute not in ("sliced", "dense"):
            raise ValueError(f"client_compute must be sliced or dense; got {self.client_compute!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")

    def __getattr__(self, name: str):
        # called only when ordinary lookup fails: the algorithm's hyperparameters read flat
        params = self.__dict__.get("params")
        if params is not None and name in {f.name for f in fields(params)}:
            return getattr(params, name)
        raise AttributeError(f"the {self.__dict__.get('algo', '?')} config has no setting {name!r}")

    def to_dict(self) -> dict:
        """The run settings and the algorithm's hyperparameters, flat (as the histories store them)."""
        out = {name: getattr(self, name) for name in GENERIC_FIELDS}
        out.update(dataclasses.asdict(self.params))
        return out

    @classmethod
    def from_dict(cls, config: dict) -> "RunConfig":
        """The config of a history.  Histories written before the algorithms had settings of their
        own list every algorithm's settings: those the run's algorithm does not have are left out."""
        from emfl.nn import algorithms

        own = {f.name for f in fields(algorithms.get(config.get("algo", "fedavg")).Params)}
        return cls(**{k: v for k, v in config.items() if k in GENERIC_FIELDS or k in own})

    def differences(self, other: "RunConfig") -> list:
        a, b = self.to_dict(), other.to_dict()
        return [k for k in {**a, **b} if k not in self.RESUMABLE and a.get(k) != b.get(k)]


GENERIC_FIELDS = tuple(f.name for f in fields(RunConfig) if f.name != "params")


def _make_params(algorithm, params, settings: dict):
    """The algorithm's ``Params`` from ``params`` (an instance or a dict) and flat ``settings``."""
    from emfl.nn import algorithms

    names = [f.name for f in fields(algorithm.Params)]
    if isinstance(params, algorithm.Params):
        params = dataclasses.asdict(params)
    values = {**(params or {}), **settings}
    for key in values:
        if key not in names:
            owners = [n for n, a in algorithms.ALGORITHMS.items() if key in {f.name for f in fields(a.Params)}]
            has = f"its settings are {', '.join(names)}" if names else "it has no settings of its own"
            where = (f"{key} is a setting of {', '.join(owners)}: pass --algo {owners[0]}" if owners
                     else "check the spelling (python -m emfl run --help lists every setting)")
            raise ValueError(f"{algorithm.name} has no setting {key!r} ({has}); {where}")
    return algorithm.Params(**values)


def _settings(d: dict) -> str:
    return ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in d.items())


def make_config(algo: str = "fedavg", **settings) -> RunConfig:
    """The :class:`RunConfig` for ``algo``, an algorithm or a preset name, and the settings given
    explicitly.  A preset (``NAME-LEVEL``, e.g. the paper's FedSparse levels) fixes the algorithm and
    some of its settings; an explicit setting that contradicts it is an error naming both.  The
    config records the preset."""
    from emfl.nn.algorithms import PRESETS

    if algo not in PRESETS:
        return RunConfig(algo=algo, **settings)
    preset = PRESETS[algo]
    for key, value in preset.items():
        if key in settings and settings[key] != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} {settings[key]!r} contradicts --algo {algo}, which sets {key} = "
                             f"{value!r}: drop {flag}, or use --algo {preset['algo']} {flag} {settings[key]!r}")
    return RunConfig(**{**settings, **preset, "preset": algo})
