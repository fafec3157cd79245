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

from emfl.nn import algorithms
from emfl.nn.models import MODELS
from emfl.nn.settings import check_fields, positive, setting, whole
from emfl.optim import OPTIMIZERS

__all__ = ["RunConfig", "make_config", "TASKS", "GENERIC_FIELDS", "PRECISIONS", "INPUTS"]

PRECISIONS = ("float32", "float64")
INPUTS = ("standard", "unit", "centered")  # how pixels reach the model: (x / 255 - mean) / std per channel,
# x / 255, or 2 x / 255 - 1

# each task's defaults, and the models its inputs fit (the 12-bit task's inputs are too small for a conv net)
TASKS = {"cifar10": {"batch_size": 64, "model": "lenet5"}, "femnist": {"batch_size": 20, "model": "lenet5"},
         "bits": {"batch_size": 32, "model": "mlp-tanh", "models": ("mlp-tanh",)}}


def _check_device(name: str, value) -> None:
    if not isinstance(value, str) or (value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:")):
        raise ValueError(f"device must be auto, cpu or cuda[:N]; got {value!r}")


@dataclass(init=False)
class RunConfig:
    """Everything a run depends on; stored in its checkpoint and its JSON history.

    ``RunConfig(**settings)`` takes the run settings below and the algorithm's own
    hyperparameters by name (see ``python -m emfl run --help``); ``params`` holds the latter."""

    task: str = setting("cifar10", "data set", choices=lambda: tuple(TASKS))
    algo: str = setting("fedavg", "an algorithm (emfl.nn.algorithms) or a preset", cli=False)
    model: str = setting("", "network (default: the task's, lenet5; mlp-tanh for --task bits)", choices=lambda: tuple(MODELS))
    rounds: int = setting(100, "rounds in all (with --resume: continue up to this)", check=whole(1))
    seed: int = setting(0, "seed of the split, the model and every client", check=whole(0))
    clients_per_round: int = setting(10, "clients sampled each round", check=whole(1))
    local_epochs: int = setting(1, "passes over its data a client makes each round", check=whole(1))
    batch_size: int = setting(0, "0: the task's (64 for CIFAR-10, 20 for FEMNIST)", check=whole(0))
    client_lr: float = setting(0.05, "client SGD learning rate", check=positive)
    server_opt: str = setting("adam", "server optimiser on the difference gradient (adam: the literature's FedAdam "
                              "when the algorithm is fedavg; sgd with --server-lr 1 is McMahan's FedAvg)",
                              choices=OPTIMIZERS)
    server_lr: float = setting(1e-3, "server learning rate", check=positive)
    alpha: float = setting(1.0, "CIFAR-10 split: Dirichlet concentration (Hsu et al.'s convention)", check=positive)
    inputs: str = setting("standard", "pixels standardised per channel (training set's mean and std), x / 255 in "
                          "[0, 1] (unit), or 2 x / 255 - 1 in [-1, 1] (centered); the paper states none",
                          choices=INPUTS)
    test_split: str = setting("matched", "CIFAR-10 shard test sets: matched to each shard's classes, or the earlier "
                              "disjoint draw", choices=("matched", "disjoint"))
    num_shards: int = setting(100, "CIFAR-10: clients", check=whole(1))
    shard_size: int = setting(500, "CIFAR-10: training images per client", check=whole(1))
    max_writers: int = setting(0, "FEMNIST: keep the first k writers (0: all)", check=whole(0))
    eval_every: int = setting(10, "rounds between evaluations (each one rewrites the history)", check=whole(1))
    checkpoint_every: int = setting(1, "rounds between checkpoints (kill -9 loses at most this many)", check=whole(1))
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda or cuda:N", check=_check_device)
    client_batching: str = setting("auto", "train a round's clients one by one (loop) or batched (vmap; auto: batched "
                                   "on CUDA)", choices=("auto", "loop", "vmap"))
    client_compute: str = setting("sliced", "clients train the model cut to its surviving units (sliced, faster) or "
                                  "the masked dense model (the same updates up to float round-off)",
                                  choices=("sliced", "dense"))
    precision: str = setting("float32", "float32 (the paper's, the bytes it counts) or float64 (3-5x slower on the "
                             "CPU: to compare two computations of the same maths beyond float32 round-off)",
                             choices=PRECISIONS)
    preset: str = setting("", "the preset name the run was asked for, \"\" for none", cli=False)
    params: Any = None  # the algorithm's hyperparameters: an instance of its module's Params

    # fields that may differ between a checkpoint and the run that resumes it
    RESUMABLE = ("rounds", "eval_every", "checkpoint_every", "device", "client_batching", "client_compute",
                 "preset")

    def __init__(self, **settings):
        for f in fields(RunConfig):
            if f.name != "params":
                setattr(self, f.name, settings.pop(f.name, f.default))
        params = settings.pop("params", None)
        check_fields(self)
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
        own = {f.name for f in fields(algorithms.get(config.get("algo", "fedavg")).Params)}
        return cls(**{k: v for k, v in config.items() if k in GENERIC_FIELDS or k in own})

    def differences(self, other: "RunConfig") -> list:
        a, b = self.to_dict(), other.to_dict()
        return [k for k in {**a, **b} if k not in self.RESUMABLE and a.get(k) != b.get(k)]


GENERIC_FIELDS = tuple(f.name for f in fields(RunConfig) if f.name != "params")


def _make_params(algorithm, params, settings: dict):
    """The algorithm's ``Params`` from ``params`` (an instance or a dict) and flat ``settings``."""
    names = [f.name for f in fields(algorithm.Params)]
    clash = set(names) & set(GENERIC_FIELDS)
    if clash:
        raise ValueError(f"{algorithm.name}: settings {', '.join(sorted(clash))} are run settings already; rename them")
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
    if algo not in algorithms.PRESETS:
        return RunConfig(algo=algo, **settings)
    preset = algorithms.PRESETS[algo]
    for key, value in preset.items():
        if key in settings and settings[key] != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} {settings[key]!r} contradicts --algo {algo}, which sets {key} = "
                             f"{value!r}: drop {flag}, or use --algo {preset['algo']} {flag} {settings[key]!r}")
    return RunConfig(**{**settings, **preset, "preset": algo})
