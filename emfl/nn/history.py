"""Run histories (the JSON the runner writes): loading and plotting.  Plot helpers take an ``ax``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["load_history", "column", "plot_metric", "summary"]

METRICS = ("global_acc", "local_acc", "cum_gib", "round", "seconds", "train_loss")


def load_history(path) -> dict:
    """A run history written by :func:`emfl.nn.runner.run`; a clear error if it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no run history at {path}; make one with `python -m emfl run ... --out {path}`") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it is not a run history") from None
    if not isinstance(doc, dict) or "records" not in doc or "config" not in doc:
        raise ValueError(f"{path} has no 'config' and 'records': it is not a run history")
    return doc


def column(doc: dict, key: str) -> np.ndarray:
    """One metric over the evaluated rounds, as an array."""
    if key not in METRICS and not any(key in r for r in doc["records"]):
        raise KeyError(f"unknown metric {key!r}; the records hold {', '.join(doc['records'][0]) if doc['records'] else 'nothing'}")
    return np.array([r.get(key, np.nan) for r in doc["records"]], dtype=float)


def plot_metric(ax, doc: dict, metric: str = "global_acc", x: str = "round", label=None, **kwargs):
    """``metric`` against ``x`` (``round`` or ``cum_gib``) for one run, on ``ax``."""
    (line,) = ax.plot(column(doc, x), column(doc, metric), label=label, **kwargs)
    ax.set_xlabel({"round": "round", "cum_gib": "communication, up + down (GiB)"}.get(x, x))
    ax.set_ylabel({"global_acc": "global accuracy", "local_acc": "local accuracy"}.get(metric, metric))
    return line


def summary(doc: dict) -> dict:
    """The last record with the run's algorithm, task, rounds and hardware, for tables."""
    last = doc["records"][-1] if doc["records"] else {}
    hw = doc.get("hardware", {})
    return {"algo": doc["config"]["algo"], "task": doc["config"]["task"], "rounds": last.get("round"),
            "planned_rounds": doc["config"]["rounds"], "global_acc": last.get("global_acc"),
            "local_acc": last.get("local_acc"), "cum_gib": last.get("cum_gib"),
            "device": hw.get("device"), "threads": hw.get("threads"), "hours": last.get("seconds", 0) / 3600}
