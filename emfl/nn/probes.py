"""Probes that watch a run: what the clients' models know just before the server averages them,
and what the averaged model knows just after (Adilova et al. 2019).

An observer joins an :class:`emfl.nn.engine.Engine` through ``engine.observers``; the engine calls
``client_model(engine, round, s, model)`` with each client's locally trained model (before the
M-step) and ``server_model(engine, round, model)`` with the server's model after it.
:class:`InfoProbe` records a point of the information plane (``emfl.info``) per chosen layer.
"""

from __future__ import annotations

import numpy as np
import torch

from emfl import info
from emfl.nn.state import state_vector

__all__ = ["InfoProbe", "layer_activations", "local_steps", "probed_run", "info_flow", "lenet_info_flow", "probe_points", "averaging_jumps",
           "server_activations", "layer_colours", "plot_info_plane", "run_label", "load_info_runs", "period_label"]


@torch.no_grad()
def layer_activations(model: torch.nn.Module, x: torch.Tensor, layers) -> dict:
    """``{name: activations (examples x units, float64 NumPy)}`` of the named modules of ``model``
    on the (normalised) inputs ``x``, in eval mode; the model's mode is restored."""
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"the model has no layers {missing}; its layers: {', '.join(n for n in modules if n)}")
    out, hooks = {}, []
    for name in layers:
        hooks.append(modules[name].register_forward_hook(
            lambda mod, inp, o, name=name: out.__setitem__(name, o.detach().flatten(1).double().cpu().numpy())))
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return out


class InfoProbe:
    """Every ``every`` rounds, ``I(X;T)`` and ``I(T;Y)`` (bits) of each layer in ``layers`` on the
    probe inputs ``x`` (uint8, as the data set stores them) with labels ``y``: binned (``bins``
    bins over ``[lo, hi]``; ``-1, 1`` suits tanh) for every sampled client's model before averaging
    and for the server's after, and with the noisy-layer upper bound (``noise``) on the first
    ``kde_points`` probe inputs.  ``lo = hi = None`` bins each layer over its own range at each
    probe; layers in ``relu`` are read through a ReLU (a model that applies it as a function, like
    LeNet-5, has no module for it).  ``records``: one dict per model, layer and probed round;
    ``server_states``: the server's weights at each probed round (to re-estimate later), kept only
    with ``keep_weights``."""

    def __init__(self, x: torch.Tensor, y, layers, every: int = 1, bins: int = 30, lo: float | None = -1.0,
                 hi: float | None = 1.0, noise: float = 0.1, kde_points: int = 1000, relu=(),
                 keep_weights: bool = True):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a whole number >= 1; got {every!r}")
        self.x, self.y = x, np.asarray(y)
        self.layers, self.every = tuple(layers), int(every)
        self.bins, self.lo, self.hi, self.noise, self.kde_points = bins, lo, hi, noise, kde_points
        self.relu, self.keep_weights = tuple(relu), keep_weights
        self.records: list = []
        self.server_states: list = []  # the server's state vector at each probed round: {round, w}

    def _probe(self, engine, rnd: int, model, who: str, s) -> None:
        if rnd % self.every:
            return
        x = engine.data.normalize(self.x, engine.device)
        k = min(self.kde_points, len(self.y))
        for name, T in layer_activations(model, x, self.layers).items():
            if name in self.relu:
                T = np.maximum(T, 0.0)
            binned = info.binning(T, self.y, self.bins, self.lo, self.hi)
            noisy = info.kde(T[:k], self.y[:k], self.noise)
            self.records.append({"round": rnd, "model": who, "client": s, "layer": name,
                                 "ixt": binned.ixt, "ity": binned.ity, "kde_ixt": noisy.ixt, "kde_ity": noisy.ity})

    def client_model(self, engine, rnd: int, s: int, model) -> None:
        self._probe(engine, rnd, model, "client", s)

    def server_model(self, engine, rnd: int, model) -> None:
        self._probe(engine, rnd, model, "server", None)
        if self.keep_weights and rnd % self.every == 0:
            self.server_states.append({"round": rnd, "w": state_vector(model).tolist()})


def probed_run(config, data, probe: "InfoProbe", progress=None):
    """Run ``config`` on ``data`` with ``probe`` watching (from the starting model on), evaluating
    every ``config.eval_every`` rounds and at the end; returns the engine."""
    from emfl.nn.engine import Engine

    engine = Engine(config, data)
    engine.observers.append(probe)
    probe.server_model(engine, 0, engine.model)  # the starting point
    while engine.round < config.rounds:
        engine.run_round()
        if engine.round % config.eval_every == 0 or engine.round == config.rounds:
            record = engine.evaluate()
            if progress:
                progress(record)
    return engine


def lenet_info_flow(task: str = "femnist", data_dir=None, rounds: int = 50, every: int = 5, max_writers: int = 200,
                    probe_size: int = 1000, bins: int = 30, noise: float = 1.0, seed: int = 0, progress=None) -> dict:
    """A short FedAvg run of the paper's LeNet-5 (its protocol: 10 clients a round, one local
    epoch, server Adam) on real FEMNIST (the first ``max_writers`` writers) or CIFAR-10, with an
    :class:`InfoProbe` on ``fc1`` (after its ReLU) and ``fc2`` (the logits) over the first
    ``probe_size`` images of the global test set, binned over each layer's own range.  The
    weights are not kept (600,000 values a probe)."""
    from emfl.nn.config import RunConfig
    from emfl.nn.runner import load_task_data

    extra = {"max_writers": max_writers} if task == "femnist" else {"test_split": "disjoint"}
    cfg = RunConfig(task=task, rounds=rounds, seed=seed, eval_every=every, device="cpu", **extra)
    data = load_task_data(cfg, data_dir)
    x, y = data.test_union()
    probe = InfoProbe(x[:probe_size], y[:probe_size].numpy(), ("fc1", "fc2"), every=every, bins=bins, lo=None,
                      hi=None, noise=noise, kde_points=probe_size, relu=("fc1",), keep_weights=False)
    engine = probed_run(cfg, data, probe, progress)
    return {"config": {**cfg.to_dict(), "local_steps": "one epoch", "bins": bins, "noise": noise,
                       "probe_inputs": int(min(probe_size, len(y))), "binning_range": "each layer's own, per probe"},
            "records": engine.history, "probes": probe.records}


def local_steps(n_s: int, batch_size: int, local_epochs: int) -> int:
    """Local steps a client takes between two averagings (the aggregation period)."""
    return local_epochs * -(-n_s // batch_size)


def info_flow(local_epochs: int = 1, batch_size: int = 32, alpha: float = 1000.0, rounds: int = 50,
              every: int = 5, clients: int = 10, client_lr: float = 0.1, seed: int = 0, layers=None,
              bins: int = 30, noise: float = 0.1, progress=None) -> dict:
    """A FedAvg run (plain averaging: server SGD with learning rate 1) of the tanh network on the
    12-bit task with an :class:`InfoProbe` on all 4,096 patterns; returns a JSON-ready history:
    ``config``, the evaluated ``records`` and the ``probes``."""
    from emfl.nn.bits import bit_patterns
    from emfl.nn.config import RunConfig
    from emfl.nn.runner import load_task_data

    cfg = RunConfig(task="bits", model="mlp-tanh", rounds=rounds, seed=seed, num_shards=clients,
                    clients_per_round=clients, alpha=float(alpha), batch_size=batch_size, local_epochs=local_epochs,
                    client_lr=client_lr, server_opt="sgd", server_lr=1.0, eval_every=every, device="cpu")
    data = load_task_data(cfg)
    x, y = bit_patterns(0)
    order = np.random.default_rng(seed).permutation(len(y))  # the KDE's subset: a fixed random one
    probe = InfoProbe(torch.from_numpy(x[order] * 255).view(-1, 1, 1, x.shape[1]), y[order],
                      layers or tuple(f"act{i}" for i in range(1, 6)), every=every, bins=bins, noise=noise)
    engine = probed_run(cfg, data, probe, progress)
    n_s = int(np.median(data.train_sizes()))
    return {"config": {**cfg.to_dict(), "local_steps": local_steps(n_s, batch_size, local_epochs), "bins": bins,
                       "noise": noise, "probe_inputs": len(y), "input_mean": data.mean, "input_std": data.std},
            "records": engine.history, "probes": probe.records, "server_states": probe.server_states}


# ---------------------------------------------------------------------- reading a probed run
def probe_points(doc: dict, layer: str, model: str = "server", key: str = "") -> tuple:
    """``(rounds, ixt, ity)`` of ``layer`` from a probed run: the server's model after each
    averaging (``model="server"``) or the mean over the clients' models just before it
    (``"client"``); ``key="kde_"`` reads the noisy-layer estimate instead of the binned one."""
    rows = [r for r in doc["probes"] if r["layer"] == layer and r["model"] == model]
    if not rows:
        raise ValueError(f"no {model} probes of layer {layer!r}; the run probed "
                         f"{sorted({r['layer'] for r in doc['probes']})}")
    rounds = sorted({r["round"] for r in rows})
    ixt = [np.mean([r[key + "ixt"] for r in rows if r["round"] == t]) for t in rounds]
    ity = [np.mean([r[key + "ity"] for r in rows if r["round"] == t]) for t in rounds]
    return np.array(rounds), np.array(ixt), np.array(ity)


def averaging_jumps(doc: dict, layer: str, key: str = "ity") -> tuple:
    """``(rounds, before, after)``: for each probed round, the clients' mean ``key`` (``ixt`` or
    ``ity``, bits) just before averaging and the server's just after; ``after - before`` is what
    one M-step did to what the layer knows."""
    r_c, ixt_c, ity_c = probe_points(doc, layer, "client")
    r_s, ixt_s, ity_s = probe_points(doc, layer, "server")
    server = dict(zip(r_s, ixt_s if key == "ixt" else ity_s))
    before = ixt_c if key == "ixt" else ity_c
    return r_c, before, np.array([server[t] for t in r_c])


def server_activations(doc: dict, rnd: int, layers=None) -> tuple:
    """``(activations, y)``: the server model's layers at probed round ``rnd`` on all 4,096
    patterns, re-computed from the weights the run kept (to try other estimators or bin counts)."""
    from emfl.nn.bits import bit_patterns
    from emfl.nn.models import TanhMLP
    from emfl.nn.state import load_state_vector

    states = {st["round"]: st["w"] for st in doc["server_states"]}
    if rnd not in states:
        raise ValueError(f"round {rnd} was not probed; probed rounds: {sorted(states)}")
    model = TanhMLP()
    load_state_vector(model, torch.tensor(states[rnd], dtype=torch.float32))
    x, y = bit_patterns(0)
    cfg = doc["config"]
    z = (torch.from_numpy(x).float() - cfg["input_mean"][0]) / cfg["input_std"][0]
    layers = layers or [f"act{i}" for i in range(1, len(TanhMLP.widths) + 1)]
    return layer_activations(model, z.view(-1, 1, 1, x.shape[1]), layers), y


def layer_colours(doc: dict) -> dict:
    """``{layer: colour}`` for every layer a probed run probed, from dark (the first) to light (the
    last): the colours :func:`plot_info_plane` draws the layers in, for any other figure of the run."""
    import matplotlib.pyplot as plt

    layers = sorted({r["layer"] for r in doc["probes"]})
    return dict(zip(layers, plt.get_cmap("plasma")(np.linspace(0, 0.85, len(layers)))))


def plot_info_plane(ax, doc: dict, layers=None, key: str = "", clients: bool = True, title: str = "",
                    legend: bool = False):
    """The information plane of a probed run on ``ax``: per layer the server's points after each
    averaging joined in round order (a circle at the start, a star at the end) and, faint, the
    clients' points just before each averaging; colours from :func:`layer_colours`.  ``legend``:
    name the layers in the lower right corner, where no layer goes (a layer that tells the inputs
    apart, far right, also tells the labels apart: high up)."""
    colours = layer_colours(doc)
    layers = layers or list(colours)
    for layer in layers:
        c = colours[layer]
        _, ixt, ity = probe_points(doc, layer, "server", key)
        ax.plot(ixt, ity, "-", color=c, lw=1.2, label=layer)
        ax.plot(ixt[0], ity[0], "o", color=c, ms=5)
        ax.plot(ixt[-1], ity[-1], "*", color=c, ms=10)
        if clients:
            rows = [r for r in doc["probes"] if r["layer"] == layer and r["model"] == "client"]
            ax.scatter([r[key + "ixt"] for r in rows], [r[key + "ity"] for r in rows], s=4, color=c, alpha=0.25)
    ax.set_xlabel("I(X;T), bits" + (" (noisy layer)" if key else ""))
    ax.set_ylabel("I(T;Y), bits")
    if title:
        ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(loc="lower right", fontsize=8)
    return ax


def run_label(doc: dict) -> str:
    """``"IID"`` for a split with ``alpha >= 100``, else ``"Dirichlet alpha"``."""
    a = float(doc["config"]["alpha"])
    return "IID" if a >= 100 else f"Dirichlet {a:g}"


def load_info_runs(directory) -> dict:
    """The probed runs ``bits_*.json`` of ``directory`` as ``{(split label, local steps): doc}``,
    IID first, then by the aggregation period."""
    import json
    from pathlib import Path

    found = {}
    for path in sorted(Path(directory).glob("bits_*.json")):
        try:
            doc = json.loads(path.read_text())
            key = (run_label(doc), int(doc["config"]["local_steps"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a probed run written by `python -m emfl info-flow` ({err}); "
                             "delete it or write it again") from None
        found[key] = doc
    if not found:
        raise FileNotFoundError(f"no probed runs bits_*.json in {directory}; make them with `python -m emfl info-flow`")
    return dict(sorted(found.items(), key=lambda kv: (kv[0][0] != "IID", kv[0][0], kv[0][1])))


def period_label(steps: int) -> str:
    """``"1 local step a round"``, ``"11 local steps a round"``."""
    return f"{steps} local step{'s' if steps != 1 else ''} a round"
