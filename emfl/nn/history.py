"""Run histories (the JSON the runner writes): loading and plotting.  Plot helpers take an ``ax``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emfl.nn.algorithms import ALGORITHMS

__all__ = ["load_history", "column", "plot_metric", "summary", "method_name", "record_at", "load_runs",
           "comparison", "format_comparison", "cut", "gib_to_reach", "first_reach", "reach_table", "settled_round",
           "extrapolate_gib", "extrapolation_table", "seed_spread", "alive_units", "load_reruns", "rerun_spread", "format_rerun_spread",
           "plot_runs", "plot_seeds", "quick_mode", "PAPER",
           "LAM0_LEVELS", "fedavg_gib", "lam0_study", "load_lam0_study", "format_lam0_study", "reading_fit", "plot_lam0_study",
           "REFERENCE_READING", "reading", "load_ablation", "ablation_rows", "format_ablation"]

METRICS = ("global_acc", "local_acc", "cum_gib", "round", "seconds", "train_loss", "sparsity", "sparsity_own", "tv_mean", "tv_max")

# The paper's Tables 1 (CIFAR-10, 1,000 rounds) and 3 (FEMNIST, 6,000 rounds), mean of 3 seeds:
# global accuracy %, local accuracy %, GB communicated (GiB, see tutorial 03b), sparsity %.
PAPER = {
    "cifar10": {"FedAvg": (69.7, 86.2, 65, None), "FedDrop": (69.9, 84.9, 34, None),
                "FedL1": (62.1, 82.5, 36, 61.8), "FedSparse low": (68.9, 86.9, 52, 21.4),
                "FedSparse mid": (68.9, 87.6, 35, 46.8), "FedSparse high": (68.4, 86.9, 23, 66.5)},
    "femnist": {"FedAvg": (85.8, 90.8, 272, None), "FedDrop": (84.7, 87.6, 168, None),
                "FedL1": (82.0, 85.9, 187, 45.5), "FedSparse low": (85.4, 90.8, 270, 1.0),
                "FedSparse mid": (85.1, 90.6, 148, 45.6), "FedSparse high": (84.1, 89.6, 102, 62.8)},
}
ORDER = ("FedAvg", "FedDrop", "FedL1", "FedSparse low", "FedSparse mid", "FedSparse high")
_LEVELS = {5e-7: "low", 5e-6: "mid", 5e-5: "high"}
LAM0_LEVELS = {"low": 5e-7, "mid": 5e-6, "high": 5e-5}  # the paper's lam0 per level
COLOURS = {"FedAvg": "black", "FedDrop": "tab:green", "FedL1": "tab:purple", "FedSparse low": "tab:orange",
           "FedSparse mid": "tab:red", "FedSparse high": "tab:blue", "FedSpa D = 0.5": "tab:cyan",
           "FedSpa D = 0.2": "tab:brown"}  # distinct hues, not shades of one


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


def alive_units(doc: dict) -> dict:
    """The surviving units of each gated layer over a run (FedSparse's and FedL1's records hold
    ``alive_units``): ``{layer: array}``, one entry per evaluated record, NaN where a record has none
    (histories written before records held it), and ``{}`` for a run without gates."""
    names = []
    for r in doc["records"]:
        names += [n for n in r.get("alive_units", {}) if n not in names]
    return {n: np.array([r.get("alive_units", {}).get(n, np.nan) for r in doc["records"]], dtype=float) for n in names}


def plot_metric(ax, doc: dict, metric: str = "global_acc", x: str = "round", label=None, **kwargs):
    """``metric`` against ``x`` (``round`` or ``cum_gib``) for one run, on ``ax``."""
    (line,) = ax.plot(column(doc, x), column(doc, metric), label=label, **kwargs)
    ax.set_xlabel({"round": "round", "cum_gib": "communication, up + down (GiB)"}.get(x, x))
    ax.set_ylabel({"global_acc": "global accuracy", "local_acc": "local accuracy"}.get(metric, metric))
    return line


def plot_runs(ax, runs: dict, metric: str = "global_acc", x: str = "round", max_round=None, **kwargs):
    """``metric`` against ``x`` for every run of ``runs`` (name -> history) on ``ax``, one colour
    per method; runs without the metric (e.g. FedAvg's sparsity) are left out.  ``max_round`` cuts
    longer runs to the rounds the others have."""
    for name, doc in runs.items():
        if not any(metric in r for r in doc["records"]):
            continue
        plot_metric(ax, cut(doc, max_round), metric, x=x, label=name, color=COLOURS.get(name), **kwargs)
    ax.set_ylabel({"global_acc": "global accuracy", "local_acc": "local accuracy", "sparsity": "sparsity of the server model",
                   "tv_mean": "mean |pi_s - theta|", "tv_max": "max |pi_s - theta|"}.get(metric, metric))


def summary(doc: dict) -> dict:
    """The last record with the run's algorithm, task, rounds and hardware, for tables."""
    last = doc["records"][-1] if doc["records"] else {}
    hw = doc.get("hardware", {})
    return {"algo": doc["config"]["algo"], "task": doc["config"]["task"], "rounds": last.get("round"),
            "planned_rounds": doc["config"]["rounds"], "global_acc": last.get("global_acc"),
            "local_acc": last.get("local_acc"), "cum_gib": last.get("cum_gib"),
            "device": hw.get("device"), "threads": hw.get("threads"), "hours": last.get("seconds", 0) / 3600}


def method_name(doc: dict) -> str:
    """The paper's name for a run: FedAvg, FedDrop, FedL1, FedSparse low / mid / high (by lam0), or
    the title its algorithm registers.  A FedSparse run with the lam0 scale that is not the default
    (``--sparse-reg``) gets it appended: "FedSparse high, batch"."""
    cfg = doc["config"]
    algo = cfg["algo"]
    return ALGORITHMS[algo].display_name(cfg) if algo in ALGORITHMS else algo


def record_at(doc: dict, rnd: int) -> dict:
    """The evaluated record at round ``rnd`` (the last one before it if ``rnd`` was not evaluated)."""
    rows = [r for r in doc["records"] if r["round"] <= rnd]
    if not rows:
        raise ValueError(f"the run has no evaluated round <= {rnd}; its first is {doc['records'][0]['round'] if doc['records'] else 'none'}")
    return rows[-1]


def load_runs(directory, task: str, seed: int = 0, subdirs=()) -> dict:
    """Every committed history ``{task}_*_seed{seed}.json`` in ``directory`` (and in its
    ``subdirs``, e.g. ``("schedule",)``), by method name, in the paper's row order.  Where one
    method has histories in several of these folders, the one that reached the most rounds wins."""
    found = {}
    for folder in (Path(directory), *(Path(directory) / sub for sub in subdirs)):
        for path in sorted(folder.glob(f"{task}_*_seed{seed}.json")):
            doc = load_history(path)
            name = method_name(doc)
            if name not in found or _last_round(doc) > _last_round(found[name]):
                found[name] = doc
    if not found:
        raise FileNotFoundError(f"no run histories {task}_*_seed{seed}.json in {directory}")
    return {k: found[k] for k in sorted(found, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))}


def _last_round(doc: dict) -> int:
    return doc["records"][-1]["round"] if doc["records"] else 0


def comparison(runs: dict, rnd=None, planned=None) -> list:
    """Rows of the paper's table for every run: global and local accuracy (%), GiB communicated,
    its share of FedAvg's over the same rounds, sparsity (%), at round ``rnd`` or, for ``None``,
    at each run's last evaluated round; ``planned`` is the schedule's rounds (default: each run's
    own planned rounds)."""
    rows = []
    for name, doc in runs.items():
        r = record_at(doc, rnd) if rnd is not None else doc["records"][-1]
        base = record_at(runs["FedAvg"], r["round"])["cum_gib"] if "FedAvg" in runs else None  # same rounds
        sparsity = r.get("sparsity")
        rows.append({"method": name, "round": r["round"], "planned": planned or doc["config"]["rounds"],
                     "global_acc": 100 * r["global_acc"], "local_acc": 100 * r["local_acc"], "cum_gib": r["cum_gib"],
                     "comm_vs_fedavg": r["cum_gib"] / base if base else None,
                     "sparsity": None if sparsity is None else 100 * sparsity})
    return rows


def cut(doc: dict, max_round) -> dict:
    """The run with only its records up to round ``max_round`` (all of them for ``None``)."""
    if max_round is None:
        return doc
    return {**doc, "records": [r for r in doc["records"] if r["round"] <= max_round]}


def gib_to_reach(doc: dict, metric: str, level: float):
    """GiB communicated (up + down) at the first evaluation where ``metric`` reaches ``level``;
    ``None`` if the run never does.  Compares methods by what accuracy costs, at any run length."""
    r = first_reach(doc, metric, level)
    return None if r is None else r["cum_gib"]


def format_comparison(rows: list, task: str) -> str:
    """``rows`` of :func:`comparison` beside the paper's numbers, as a fixed-width text table.  A run
    that stopped before its planned rounds shows both ("180/1000").

    The paper's communication share is its GB over FedAvg's GB (at 1,000 / 6,000 rounds)."""
    paper = PAPER[task]
    fmt = lambda v, spec: format("-", spec[:2]) if v is None else format(v, spec)  # noqa: E731
    head = (f"{'method':<15} {'round':>9} | {'global':>6} {'local':>6} {'GiB':>7} {'vs FedAvg':>9} {'sparsity':>8} |"
            f" {'paper:':>6} {'global':>6} {'local':>6} {'GB':>4} {'vs FedAvg':>9} {'sparsity':>8}")
    lines = [head, "-" * len(head)]
    for row in rows:
        p = paper.get(row["method"])
        planned = row.get("planned")
        rnd = f"{row['round']}/{planned}" if planned and row["round"] < planned else str(row["round"])
        ours = (f"{row['method']:<15} {rnd:>9} | {row['global_acc']:>6.1f} {row['local_acc']:>6.1f} "
                f"{row['cum_gib']:>7.2f} {fmt(row['comm_vs_fedavg'], '>9.2f')} {fmt(row['sparsity'], '>8.1f')} |")
        if p:
            ours += (f" {'':>6} {p[0]:>6.1f} {p[1]:>6.1f} {p[2]:>4} {p[2] / paper['FedAvg'][2]:>9.2f} "
                     f"{fmt(p[3], '>8.1f')}")
        lines.append(ours)
    return "\n".join(lines)


def first_reach(doc: dict, metric: str, level: float):
    """The first evaluated record where ``metric`` reaches ``level``; ``None`` if none does."""
    for r in doc["records"]:
        if r.get(metric) is not None and r[metric] >= level:
            return r
    return None


def reach_table(runs: dict, levels: list) -> str:
    """For each run and each ``(metric, level)`` of ``levels``: the GiB communicated (up + down) and
    the round at its first evaluation at or above ``level``, a dash where it never got there; as
    a fixed-width text table.  What accuracy costs, whatever the runs' lengths."""
    heads = [f"{m.split('_')[0]} {100 * v:.1f}%" for m, v in levels]
    head = f"{'method':<15} {'rounds':>6} |" + "".join(f"{h:>17}" for h in heads)
    lines = [head, "-" * len(head)]
    for name, doc in runs.items():
        cells = []
        for m, v in levels:
            r = first_reach(doc, m, v)
            cells.append("-" if r is None else f"{r['cum_gib']:.2f} ({r['round']})")
        lines.append(f"{name:<15} {_last_round(doc):>6} |" + "".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


def settled_round(doc: dict, key: str = "sparsity", tol: float = 0.005):
    """The first evaluated round from which ``key`` stays within ``tol`` of its last value (to the
    end of the run); ``None`` if the records do not hold it."""
    values = column(doc, key)
    if np.isnan(values).all():
        return None
    rounds = column(doc, "round")
    far = np.nonzero(np.abs(values - values[-1]) > tol)[0]
    return int(rounds[0] if far.size == 0 else rounds[far[-1] + 1])


def quick_mode() -> bool:
    """True unless ``EMFL_QUICK=0``: the notebooks then re-run only a few rounds live."""
    import os

    return os.environ.get("EMFL_QUICK", "1").strip() not in ("0", "false", "no")


# --------------------------------------------------------------------------- the lam0 scale


def fedavg_gib(doc: dict, rnd: int) -> float:
    """GiB FedAvg sends (down and up) over ``rnd`` rounds with the run's model and clients per
    round: every client receives and returns the whole model, 4 bytes a value."""
    return 2 * doc["config"]["clients_per_round"] * 4 * doc["model_parameters"] * rnd / 2**30


def plot_seeds(ax, seeds: dict, metric: str = "global_acc", max_round=None, **kwargs):
    """``metric`` against rounds for runs that differ only in their seed (``seeds``: method name ->
    histories), one thin line per seed in the method's colour, each method labelled once."""
    for name, docs in seeds.items():
        for k, doc in enumerate(docs):
            plot_metric(ax, cut(doc, max_round), metric, label=f"{name}, seeds {', '.join(str(d['config']['seed']) for d in docs)}"
                        if k == 0 else None, color=COLOURS.get(name), lw=1, **kwargs)


def lam0_study(runs: list, task: str) -> list:
    """One row per FedSparse history of ``runs`` (at the paper's lam0 levels) at its last
    evaluated round: level, reading (``sparse_reg``), structural and own-group sparsity (%), the
    communication as a share of FedAvg's over the same rounds, accuracies (%), and the paper's
    sparsity and communication share for that level (Tables 1 and 3)."""
    paper = PAPER[task]
    rows = []
    for doc in runs:
        cfg = doc["config"]
        level = _LEVELS.get(float(cfg.get("lam0", -1)))
        if cfg["algo"] != "fedsparse" or cfg["task"] != task or level is None or not doc["records"]:
            continue
        r = doc["records"][-1]
        p = paper[f"FedSparse {level}"]
        rows.append({"level": level, "lam0": float(cfg["lam0"]), "reading": cfg.get("sparse_reg", "batch"),
                     "round": r["round"], "sparsity": 100 * r["sparsity"],
                     "sparsity_own": 100 * r["sparsity_own"] if r.get("sparsity_own") is not None else None,
                     "comm_vs_fedavg": r["cum_gib"] / fedavg_gib(doc, r["round"]),
                     "global_acc": 100 * r["global_acc"], "local_acc": 100 * r["local_acc"],
                     "paper_sparsity": p[3], "paper_comm_vs_fedavg": p[2] / paper["FedAvg"][2]})
    return sorted(rows, key=lambda row: (row["reading"], row["lam0"]))


def load_lam0_study(directory, tasks=("cifar10", "femnist"), seed: int = 0) -> dict:
    """``{task: lam0_study(rows)}`` from the committed histories of ``directory``."""
    return {task: lam0_study(list(load_runs(directory, task, seed).values()), task) for task in tasks}


def format_lam0_study(rows: list) -> str:
    """The rows of :func:`lam0_study` as a fixed-width text table."""
    head = (f"{'reading':<8} {'level':<5} {'round':>5} | {'sparsity':>8} {'own':>5} {'vs FedAvg':>9} {'global':>6} "
            f"{'local':>6} | {'paper:':>6} {'sparsity':>8} {'vs FedAvg':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        own = "-" if r["sparsity_own"] is None else f"{r['sparsity_own']:.1f}"
        lines.append(f"{r['reading']:<8} {r['level']:<5} {r['round']:>5} | {r['sparsity']:>8.1f} {own:>5} "
                     f"{r['comm_vs_fedavg']:>9.2f} {r['global_acc']:>6.1f} {r['local_acc']:>6.1f} | {'':>6} "
                     f"{r['paper_sparsity']:>8.1f} {r['paper_comm_vs_fedavg']:>9.2f}")
    return "\n".join(lines)


def reading_fit(rows: list) -> dict:
    """Per reading: how far its rows lie from the paper, as the mean absolute difference in
    structural sparsity (percentage points) and in the communication share, and the rows counted."""
    out = {}
    for reading in sorted({r["reading"] for r in rows}):
        mine = [r for r in rows if r["reading"] == reading]
        out[reading] = {"sparsity_gap": float(np.mean([abs(r["sparsity"] - r["paper_sparsity"]) for r in mine])),
                        "comm_gap": float(np.mean([abs(r["comm_vs_fedavg"] - r["paper_comm_vs_fedavg"]) for r in mine])),
                        "runs": len(mine)}
    return out


def plot_lam0_study(ax, rows: list, title: str = ""):
    """Structural sparsity against lam0 (log scale) for each reading, the own-group count dotted,
    and the paper's sparsity at its three levels marked, on ``ax``."""
    styles = {"batch": dict(color="tab:red", marker="o"), "example": dict(color="tab:blue", marker="s")}
    for reading in sorted({r["reading"] for r in rows}):
        mine = sorted((r for r in rows if r["reading"] == reading), key=lambda r: r["lam0"])
        lam0 = [r["lam0"] for r in mine]
        style = styles.get(reading, {})
        ax.plot(lam0, [r["sparsity"] for r in mine], label=f"{reading}: structural", **style)
        if all(r["sparsity_own"] is not None for r in mine):
            ax.plot(lam0, [r["sparsity_own"] for r in mine], ls=":", label=f"{reading}: own groups only",
                    color=style.get("color"))
    paper = sorted({(r["lam0"], r["paper_sparsity"]) for r in rows})
    ax.plot([p[0] for p in paper], [p[1] for p in paper], "k*", ms=12, ls="none", label="the paper")
    for lam0, value in paper:
        ax.annotate(f"{value:g}%", (lam0, value), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("lam0")
    ax.set_ylabel("sparsity of the server model (%)")
    ax.set_ylim(-3, 103)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)


def extrapolate_gib(doc: dict, rnd: int, window: int = 3) -> tuple:
    """``(gib, spread)``: the GiB communicated (up + down) by round ``rnd`` if every round after the
    run's last sends what a round sent, on average, over its last ``window`` evaluation intervals;
    ``spread`` is the relative range of those intervals' per-round bytes.  With ``spread == 0``
    (FedAvg and FedDrop always, FedSparse once no client's gates differ from the server's any
    more) the extrapolation is exact.  Rounds the run reached are read, not extrapolated."""
    records = doc["records"]
    if records and rnd <= records[-1]["round"]:
        return record_at(doc, rnd)["cum_gib"], 0.0
    if len(records) < window + 1:
        raise ValueError(f"need {window + 1} evaluated rounds to extrapolate; the run has {len(records)}")
    rates = []
    for a, b in zip(records[-window - 1:-1], records[-window:]):
        sent = (b["bytes_down"] + b["bytes_up"]) - (a["bytes_down"] + a["bytes_up"])
        rates.append(sent / (b["round"] - a["round"]))
    rate = float(np.mean(rates))
    last = records[-1]
    gib = last["cum_gib"] + rate * (rnd - last["round"]) / 2 ** 30
    return gib, (max(rates) - min(rates)) / rate if rate else 0.0


def extrapolation_table(runs: dict, rnd: int, task: str) -> str:
    """Communication at round ``rnd`` for every run, read where the run got there and otherwise
    extrapolated by :func:`extrapolate_gib` (``spread`` 0: exact), beside the paper's GB; as a
    fixed-width text table.  Only bytes are extrapolated, never accuracy."""
    paper = PAPER.get(task, {})
    est = {}
    for name, doc in runs.items():
        try:
            est[name] = extrapolate_gib(doc, rnd)
        except ValueError:  # too few evaluated rounds to read a rate from
            est[name] = None
    base = est["FedAvg"][0] if est.get("FedAvg") else None
    head = (f"{'method':<15} {'rounds':>6} {'GiB':>7} | {f'GiB at {rnd}':>12} {'spread':>7} {'vs FedAvg':>9} |"
            f" {'paper:':>6} {'GB':>4} {'vs FedAvg':>9}")
    lines = [head, "-" * len(head)]
    for name, doc in runs.items():
        line = f"{name:<15} {_last_round(doc):>6} {doc['records'][-1]['cum_gib']:>7.2f} |"
        if est[name] is None:
            line += f" {'-':>12} {'-':>7} {'-':>9} |"
        else:
            gib, spread = est[name]
            share = "-" if base is None else f"{gib / base:.2f}"
            line += f" {gib:>12.2f} {100 * spread:>6.1f}% {share:>9} |"
        p = paper.get(name)
        if p:
            line += f" {'':>6} {p[2]:>4} {p[2] / paper['FedAvg'][2]:>9.2f}"
        lines.append(line)
    return "\n".join(lines)


# settings that say how long a run goes, how often it is saved or evaluated and where it computes,
# not what it computes: two runs that differ only in these compute the same rounds
_NOT_COMPUTATION = ("rounds", "checkpoint_every", "device", "client_batching", "client_compute", "eval_every", "preset")


def _differing_settings(docs: list, also=()) -> list:
    """The settings (other than ``_NOT_COMPUTATION`` and ``also``) in which the runs' configs differ.
    A setting one history does not record (it predates it) is not a difference; "" equals None."""
    keep = {k: v for k, v in docs[0]["config"].items() if k not in _NOT_COMPUTATION + tuple(also)}
    diff = set()
    for doc in docs[1:]:
        cfg = doc["config"]
        diff.update(k for k in keep if k in cfg and (cfg[k] or None) != (keep[k] or None))
    return sorted(diff)


def seed_spread(docs: list, rnd: int, metric: str = "global_acc") -> dict:
    """``metric`` at round ``rnd`` over runs that differ only in their seed: ``mean``, ``min``,
    ``max``, ``n`` and the ``seeds``; a clear error if the runs differ in anything else."""
    if not docs:
        raise ValueError("no runs given")
    diff = _differing_settings(docs, also=("seed",))
    if diff:
        raise ValueError(f"the runs differ in {', '.join(diff)}, not only in the seed")
    values = np.array([record_at(doc, rnd)[metric] for doc in docs], dtype=float)
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()), "n": len(docs),
            "seeds": [doc["config"]["seed"] for doc in docs]}


def load_reruns(directory, task: str, algo: str, seed: int = 0) -> dict:
    """Re-runs of one configuration that differ only in how the CPU computes (PyTorch's kernel set,
    ``ATEN_CPU_CAPABILITY``): ``label -> history`` from the files ``{task}_{algo}_seed{seed}_{label}.json``
    in ``directory`` (``results/kernels``: labels ``default``, ``avx2``)."""
    prefix = f"{task}_{algo}_seed{seed}_"
    found = {path.stem[len(prefix):]: load_history(path) for path in sorted(Path(directory).glob(prefix + "*.json"))}
    if not found:
        raise FileNotFoundError(f"no re-runs {prefix}LABEL.json in {directory}")
    return found


RERUN_METRICS = ("global_acc", "local_acc", "sparsity", "cum_gib")


def rerun_spread(runs: dict, rounds, metrics=RERUN_METRICS) -> list:
    """How far runs of one configuration land apart (``runs``: label -> history; e.g. the committed
    run and its re-runs under other CPU kernels): for each round of ``rounds`` and each metric the
    runs record, every run's value and the range (largest minus smallest).  A clear error if the
    runs differ in a setting that changes what they compute, or one did not evaluate a round."""
    docs = list(runs.values())
    if len(docs) < 2:
        raise ValueError("rerun_spread needs two runs or more")
    diff = _differing_settings(docs)
    if diff:
        raise ValueError(f"the runs differ in {', '.join(diff)}: they do not compute the same rounds")
    rows = []
    for rnd in rounds:
        recs = {}
        for label, doc in runs.items():
            rec = record_at(doc, rnd)
            if rec["round"] != rnd:
                raise ValueError(f"run {label!r} has no record at round {rnd}")
            recs[label] = rec
        for metric in metrics:
            values = {label: r.get(metric) for label, r in recs.items()}
            if any(v is None for v in values.values()):
                continue
            rows.append({"round": rnd, "metric": metric, "values": values,
                         "range": max(values.values()) - min(values.values())})
    return rows


def format_rerun_spread(rows: list) -> str:
    """:func:`rerun_spread`'s rows as a text table: accuracies and sparsity in %, GiB as they are."""
    if not rows:
        return ""
    labels = list(rows[0]["values"])
    head = f"{'round':>5}  {'metric':<10}" + "".join(f"{label:>11}" for label in labels) + f"{'range':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        pct = row["metric"] != "cum_gib"
        fmt = (lambda v: f"{100 * v:.2f}") if pct else (lambda v: f"{v:.3f}")
        lines.append(f"{row['round']:>5}  {row['metric']:<10}" + "".join(f"{fmt(v):>11}" for v in row["values"].values())
                     + f"{fmt(row['range']):>9}")
    return "\n".join(lines)


# ---------------------------------------------------------------- ablations of FedSparse (results/ablation)
# Appendix A and Algorithm 1 read literally, at the paper's mid level: what an ablation row departs from
# (a history that predates a setting ran this reading of it)
REFERENCE_READING = {"lam0": 5e-6, "sparse_reg": "example", "theta0": 0.99, "ce_scale": 1e-4, "v_opt": "adamax",
                     "v_grad": "z", "theta_space": "prob", "ungated": "", "inputs": "standard", "alpha": 1.0}


def reading(doc: dict) -> str:
    """How a FedSparse run departs from :data:`REFERENCE_READING`, e.g. ``"lam0 = 0, v_grad = pi"``
    (``"reference"`` if it does not)."""
    cfg = doc["config"]
    if cfg.get("algo") != "fedsparse":
        raise ValueError(f"a reading is a FedSparse run's; this one ran {cfg.get('algo')}")
    out = []
    for key, ref in REFERENCE_READING.items():
        value = cfg.get(key, ref)
        if (value or None) != (ref or None):
            out.append(f"{key} = {value:g}" if isinstance(value, float) else f"{key} = {value}")
    return ", ".join(out) or "reference"


def load_ablation(directory, task: str = "cifar10") -> list:
    """The histories ``{task}_*.json`` of ``directory`` (``results/ablation``): ``(fedsparse, fedavg)``,
    two lists."""
    docs = [load_history(p) for p in sorted(Path(directory).glob(f"{task}_*.json"))]
    if not docs:
        raise FileNotFoundError(f"no run histories {task}_*.json in {directory}")
    return ([d for d in docs if d["config"]["algo"] == "fedsparse"],
            [d for d in docs if d["config"]["algo"] == "fedavg"])


_DATA_KEYS = ("task", "alpha", "test_split", "num_shards", "shard_size", "max_writers", "inputs")


def _data_key(doc: dict, seed=True) -> tuple:
    """What a run's data depends on (a history that predates ``inputs`` standardised its pixels)."""
    cfg = doc["config"]
    key = tuple(cfg.get(k, "standard" if k == "inputs" else None) for k in _DATA_KEYS)
    return key + ((cfg["seed"],) if seed else ())


def ablation_rows(docs: list, fedavg: list | None, rnd: int = 200) -> list:
    """One row per reading of FedSparse (``docs``: its runs, any seeds) at round ``rnd``, the seeds'
    mean: ``alive`` (surviving units per layer), ``sparsity``, ``global_acc``, ``local_acc`` and
    ``bytes`` (cumulative bytes over FedAvg's at the same round, same seed and same data;
    ``fedavg``: FedAvg histories), and ``gap``, FedSparse's global accuracy minus that FedAvg's.
    Runs that have not reached ``rnd`` are left out; a run with no FedAvg run on its data and seed
    is an error.  The FedAvg runs come first, one row per data setting.  ``fedavg=None``: no
    comparison (``bytes`` and ``gap`` are NaN), e.g. for short screening runs."""
    base = {_data_key(d): d for d in fedavg or () if _last_round(d) >= rnd}
    groups = {}
    for doc in docs:
        if _last_round(doc) >= rnd:
            groups.setdefault(reading(doc), []).append(doc)
    rows = []
    by_data = {}
    for d in base.values():
        by_data.setdefault(_data_key(d, seed=False), []).append(d)
    for key, runs in by_data.items():
        recs = [record_at(d, rnd) for d in runs]
        inputs = dict(zip(_DATA_KEYS, key))["inputs"]
        rows.append({"reading": "FedAvg" + ("" if inputs == "standard" else f", inputs = {inputs}"),
                     "seeds": sorted(d["config"]["seed"] for d in runs), "round": rnd, "alive": {}, "sparsity": 0.0,
                     "global_acc": float(np.mean([r["global_acc"] for r in recs])),
                     "local_acc": float(np.mean([r["local_acc"] for r in recs])), "bytes": 1.0, "gap": 0.0})
    for label, runs in groups.items():
        recs, ratios, gaps = [], [], []
        for doc in runs:
            rec = record_at(doc, rnd)
            recs.append(rec)
            if fedavg is None:
                ratios.append(np.nan), gaps.append(np.nan)
                continue
            if _data_key(doc) not in base:
                raise ValueError(f"no FedAvg run on the data of {label!r} (seed {doc['config']['seed']}) reaching "
                                 f"round {rnd}: its bytes and accuracy have nothing to compare with")
            fed = record_at(base[_data_key(doc)], rnd)
            ratios.append(rec["cum_gib"] / fed["cum_gib"])
            gaps.append(rec["global_acc"] - fed["global_acc"])
        layers = list(recs[0].get("alive_units", {}))
        rows.append({"reading": label, "seeds": sorted(d["config"]["seed"] for d in runs), "round": rnd,
                     "alive": {n: float(np.mean([r["alive_units"][n] for r in recs])) for n in layers},
                     "sparsity": float(np.mean([r["sparsity"] for r in recs])),
                     "global_acc": float(np.mean([r["global_acc"] for r in recs])),
                     "local_acc": float(np.mean([r["local_acc"] for r in recs])),
                     "bytes": float(np.mean(ratios)), "gap": float(np.mean(gaps))})
    return rows


def _num(value: float, fmt: str) -> str:
    width = int(fmt.lstrip("+").split(".")[0])
    return f"{'-':>{width}}" if np.isnan(value) else format(value, fmt)


def format_ablation(rows: list) -> str:
    """:func:`ablation_rows` as a text table (accuracies and sparsity in %)."""
    layers = []
    for row in rows:
        layers += [n for n in row["alive"] if n not in layers]
    width = max([len(r["reading"]) for r in rows] + [7])
    head = (f"{'reading':<{width}}  {'seeds':<5}" + "".join(f"{n:>7}" for n in layers)
            + f"{'sparse %':>9}{'global %':>9}{'gap':>6}{'local %':>8}{'bytes':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        units = "".join(f"{r['alive'][n]:>7.1f}" if n in r["alive"] else f"{'-':>7}" for n in layers)
        lines.append(f"{r['reading']:<{width}}  {','.join(map(str, r['seeds'])):<5}{units}{100 * r['sparsity']:>9.1f}"
                     f"{100 * r['global_acc']:>9.1f}{_num(100 * r['gap'], '+6.1f')}{100 * r['local_acc']:>8.1f}"
                     f"{_num(r['bytes'], '7.2f')}")
    return "\n".join(lines)
