"""The federated round loop on neural networks, with the EM paper's protocol (its Appendix A).

Each round the server samples ``clients_per_round`` clients without replacement (with
replacement across rounds), sends them its weights ``w``; each client trains with SGD
(lr 0.05, one local epoch, batch 64 on CIFAR-10 and 20 on FEMNIST) and sends a delta back; the
server feeds the mean delta, the "difference gradient", to Adam.  Algorithms differ only in the
client's delta:

=========  ==================================================================================
fedavg     ``w - w_s`` after local SGD (hard-EM with a Gaussian prior, notebook 01)
fedprox    the same with ``lam/2 ||w_s - w||^2`` added to the local loss (an explicit prior)
fedpa      ``Sigma_s^{-1} (w - mu_s)`` from IASG samples, one per local epoch after a burn-in
           epoch (notebook 03, :mod:`emfl.fedpa`); FedAvg's delta in the first
           ``fedpa_burnin_rounds`` rounds
fedl1      ``w - w_s`` with ``lam sum_g ||w_g||`` added to the local loss (Eq. 24); groups with
           ``||w_g|| <= lam`` are zeroed before sending, by clients and server alike (Eq. 25)
feddrop    ``w - w_s`` of a random structured sub-model (units dropped per layer, removed, not
           zeroed, when counting bytes); the server scatters the sub-model's update back
fedsparse  ``z_s (w - w_s)`` with binary gates ``z_s ~ Bern(pi_s)`` per conv filter / fc neuron,
           plus a gradient for the server's thresholds ``v`` (Algorithms 1 and 2); only
           switched-on groups go up, only surviving groups (and their thresholds) come down
=========  ==================================================================================

Metrics: *global accuracy* is the server model on the union of all clients' test sets; *local
accuracy* is each client's last communicated model (the one it sent up, i.e. after its local
training) on its own test set, averaged over the clients that have taken part so far.  It is
measured when the client trains, so no client model needs to be stored.  Communication is
counted from what is sent: 4 bytes a float32 value, down and up, for every sampled client.

Randomness is derived from ``(seed, round, client)``, so a run resumed from a checkpoint repeats
an uninterrupted run bit for bit on the same device.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from emfl import fedpa as fedpa_lib
from emfl.nn.fedsparse import sparse_bytes
from emfl.nn.groups import group_norms
from emfl.nn.models import make_model
from emfl.optim import make_optimizer

__all__ = ["RunConfig", "make_config", "Engine", "ALGORITHMS", "TASKS", "Diverged", "state_vector", "load_state_vector"]

ALGORITHMS = ("fedavg", "fedprox", "fedpa", "fedsparse", "fedl1", "feddrop")
# named presets: the paper's FedSparse settings (lam0 for low / mid / high sparsity)
PRESETS = {"fedsparse-low": {"algo": "fedsparse", "lam0": 5e-7},
           "fedsparse-mid": {"algo": "fedsparse", "lam0": 5e-6},
           "fedsparse-high": {"algo": "fedsparse", "lam0": 5e-5}}
# FedSparse constants (paper, Appendix A): sigmoid temperature, initial gate probability, server
# pruning threshold, threshold learning rates (client Adamax, server Adamax), gate cross-entropy scale
SPARSE_T, SPARSE_THETA0, SPARSE_PRUNE = 1e-3, 0.99, 0.1
SPARSE_CLIENT_V_LR, SPARSE_SERVER_V_LR, SPARSE_CE_SCALE = 1e-3, 1e-2, 1e-4
TASKS = {"cifar10": {"batch_size": 64}, "femnist": {"batch_size": 20}}
GIB = 2**30


def sparse_regulariser(pi, theta, sizes, lam0: float, n_s: int = 1):
    """FedSparse's local regulariser (Eq. 41 with lam = 0): ``lam0 sum_g |g| pi_g`` (every weight
    of a group pays the L0 cost) minus ``1e-4`` times the gate cross-entropy to ``theta`` (Eq. 38),
    divided by ``n_s`` (1 for ``sparse_reg = "batch"``, the client's size for ``"example"``)."""
    from emfl.nn.gates import gate_cross_entropy

    return (lam0 * (sizes * pi).sum() - SPARSE_CE_SCALE * gate_cross_entropy(pi, theta)) / n_s


class Diverged(RuntimeError):
    """The server weights stopped being finite."""


@dataclass
class RunConfig:
    """Everything a run depends on; stored in its checkpoint and its JSON history."""

    task: str = "cifar10"
    algo: str = "fedavg"
    model: str = "lenet5"
    rounds: int = 100
    seed: int = 0
    clients_per_round: int = 10
    local_epochs: int = 1
    batch_size: int = 0  # 0: the task's default (64 for CIFAR-10, 20 for FEMNIST)
    client_lr: float = 0.05
    server_opt: str = "adam"
    server_lr: float = 1e-3
    lam: float = 0.0  # FedProx: proximal strength; FedL1: group-L1 strength and send threshold
    lam0: float = 5e-6  # FedSparse: L0 strength (paper: 5e-7 low, 5e-6 mid, 5e-5 high)
    # FedSparse: "batch" adds lam0 and the gate cross-entropy to the mean batch loss as they stand
    # (as FedL1 adds its lam); "example" divides them by the client's size (Eq. 41 / N_s exactly)
    sparse_reg: str = "batch"
    drop_conv: float = 0.1  # FedDrop: share of conv filters a client drops (paper, CIFAR-10: 0.1)
    drop_fc: float = 0.5  # FedDrop: share of hidden fc units dropped (CIFAR-10: 0.5)
    drop_io: float = 0.01  # FedDrop: share dropped in the input and output layers
    rho: float = 0.01  # FedPA: shrinkage
    fedpa_burnin_rounds: int = 0  # FedPA: rounds run in FedAvg's regime first
    alpha: float = 1.0  # CIFAR-10: Dirichlet concentration (Hsu et al.'s convention)
    test_split: str = "matched"  # CIFAR-10 shard test sets: "matched" to the shard's classes, or "disjoint"
    num_shards: int = 100  # CIFAR-10
    shard_size: int = 500  # CIFAR-10
    max_writers: int = 0  # FEMNIST: keep the first k writers (0: all)
    eval_every: int = 10
    checkpoint_every: int = 1  # a kill -9 loses at most this many rounds
    device: str = "auto"
    client_batching: str = "auto"  # loop | vmap | auto (vmap on CUDA when it applies, else loop)
    preset: str = ""  # the preset name the run was asked for (fedsparse-low|mid|high), "" for none

    # fields that may differ between a checkpoint and the run that resumes it
    RESUMABLE = ("rounds", "eval_every", "checkpoint_every", "device", "client_batching", "preset")

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {', '.join(ALGORITHMS)}")
        for name in ("rounds", "clients_per_round", "local_epochs", "eval_every", "checkpoint_every",
                     "num_shards", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1; got {value!r}")
        for name in ("batch_size", "fedpa_burnin_rounds", "max_writers", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0; got {value!r}")
        for name in ("client_lr", "server_lr", "alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        for name in ("drop_conv", "drop_fc", "drop_io"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ValueError(f"{name} must be a rate in [0, 1); got {value!r}")
        for name in ("lam", "rho", "lam0"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        if self.algo == "fedprox" and self.lam <= 0:
            raise ValueError("fedprox needs --lam > 0 (the strength of its proximal term)")
        if self.algo == "fedl1" and self.lam <= 0:
            raise ValueError("fedl1 needs --lam > 0 (group-L1 strength; the paper: 2e-3 CIFAR-10, 1e-3 FEMNIST)")
        if self.algo == "fedpa" and self.local_epochs < 2:
            raise ValueError("fedpa needs --local-epochs >= 2: one burn-in epoch, then one sample per epoch")
        if self.test_split not in ("matched", "disjoint"):
            raise ValueError(f"test_split must be matched or disjoint; got {self.test_split!r}")
        if self.sparse_reg not in ("batch", "example"):
            raise ValueError(f"sparse_reg must be batch or example; got {self.sparse_reg!r}")
        if self.client_batching not in ("auto", "loop", "vmap"):
            raise ValueError(f"client_batching must be auto, loop or vmap; got {self.client_batching!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")
        if self.preset:
            if self.preset not in PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
            clash = [f"{k} = {getattr(self, k)!r}" for k, v in PRESETS[self.preset].items() if getattr(self, k) != v]
            if clash:
                raise ValueError(f"preset {self.preset} sets {_settings(PRESETS[self.preset])}, "
                                 f"but the config has {', '.join(clash)}")
        if self.batch_size == 0:
            self.batch_size = TASKS[self.task]["batch_size"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def differences(self, other: "RunConfig") -> list:
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in self.RESUMABLE and a[k] != b[k]]


def _settings(d: dict) -> str:
    return ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in d.items())


def make_config(algo: str = "fedavg", **settings) -> RunConfig:
    """The :class:`RunConfig` for ``algo``, an algorithm or a preset name, and the settings given
    explicitly.  A preset (``fedsparse-low|mid|high``) fixes the algorithm and ``lam0``; an
    explicit setting that contradicts it is an error naming both.  The config records the preset."""
    if algo not in PRESETS:
        return RunConfig(algo=algo, **settings)
    preset = PRESETS[algo]
    for key, value in preset.items():
        if key in settings and settings[key] != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} {settings[key]!r} contradicts --algo {algo}, which sets {key} = "
                             f"{value!r}: drop {flag}, or use --algo {preset['algo']} {flag} {settings[key]!r}")
    return RunConfig(**{**settings, **preset, "preset": algo})


def _state_tensors(model):
    """Everything the server sends: parameters, then floating-point buffers (BatchNorm stats)."""
    return list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]


def state_vector(model) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in _state_tensors(model)])


@torch.no_grad()
def load_state_vector(model, vec: torch.Tensor) -> None:
    i = 0
    for t in _state_tensors(model):
        n = t.numel()
        t.copy_(vec[i:i + n].view_as(t))
        i += n
    if i != vec.numel():
        raise ValueError(f"state vector has {vec.numel()} values, the model {i}")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def sample_clients(seed: int, rnd: int, num_clients: int, clients_per_round: int) -> np.ndarray:
    """The clients of round ``rnd`` (0-based): drawn without replacement, seeded by (seed, round)."""
    rng = np.random.default_rng(_seed(seed, "clients", rnd))
    return rng.choice(num_clients, size=min(clients_per_round, num_clients), replace=False)


def local_model_ages(seed: int, rounds: int, num_clients: int, clients_per_round: int) -> np.ndarray:
    """For every client seen in the first ``rounds`` rounds, how many rounds old its last
    communicated model is at the end: what local accuracy averages over."""
    last = {}
    for rnd in range(rounds):
        for s in sample_clients(seed, rnd, num_clients, clients_per_round):
            last[int(s)] = rnd + 1
    return np.array([rounds - r for r in last.values()])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no GPU; use --device cpu or auto")
    return torch.device(name)


class Engine:
    """The server and its clients for one run: holds the model, the server state and the metrics."""

    def __init__(self, config: RunConfig, data):
        self.config = config
        self.data = data
        self.device = resolve_device(config.device)
        torch.manual_seed(_seed(config.seed, "init"))
        self.model = make_model(config.model, data.input_shape, data.num_classes).to(self.device)
        self.w = state_vector(self.model).clone()
        # global evaluation on a channels-last copy: 1.5x faster convolutions on the CPU
        self.eval_model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
        self.d = self.w.numel()
        self.opt = make_optimizer(config.server_opt, lr=config.server_lr)
        self.opt_state = self.opt.init(self.w)
        self.round = 0
        self.local_acc = np.full(data.num_clients, np.nan)
        self.bytes_down = 0
        self.bytes_up = 0
        self.seconds = 0.0
        self.history: list = []
        self._test = None
        self.v = None
        if config.algo in ("fedsparse", "fedl1", "feddrop"):
            from emfl.nn import fedsparse

            self.gmap = fedsparse.GroupMap(self.model, _state_tensors(self.model),
                                           prune_output=config.algo == "feddrop")
        if config.algo == "feddrop":
            if config.model == "resnet20":
                raise ValueError("feddrop builds sub-models of a chain of layers: use lenet5 or lenet5-classic")
            self.hooks = fedsparse.GateHooks(self.gmap)
        if config.algo == "fedsparse":
            from emfl.nn import fedsparse, gates
            from emfl.optim import adamax

            self.hooks = fedsparse.GateHooks(self.gmap)
            self.v = gates.init_threshold(self.gmap.norms(self.w), SPARSE_THETA0, SPARSE_T)
            self.v_opt = adamax(SPARSE_SERVER_V_LR)
            self.v_state = self.v_opt.init(self.v)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "round": self.round, "w": self.w.cpu(),
                "opt_state": _to_cpu(self.opt_state), "local_acc": torch.from_numpy(self.local_acc.copy()),
                "bytes_down": self.bytes_down, "bytes_up": self.bytes_up, "seconds": self.seconds,
                "history": list(self.history),
                **({"v": self.v.cpu(), "v_state": _to_cpu(self.v_state)} if self.v is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.w = state["w"].to(self.device)
        self.opt_state = _to_device(state["opt_state"], self.device)
        self.local_acc = torch.as_tensor(state["local_acc"], dtype=torch.float64).numpy().copy()
        self.bytes_down = int(state["bytes_down"])
        self.bytes_up = int(state["bytes_up"])
        self.seconds = float(state["seconds"])
        self.history = list(state["history"])
        if self.v is not None:
            self.v = state["v"].to(self.device)
            self.v_state = _to_device(state["v_state"], self.device)

    # ------------------------------------------------------------------ clients
    def sample_clients(self, rnd: int) -> np.ndarray:
        return sample_clients(self.config.seed, rnd, self.data.num_clients, self.config.clients_per_round)

    def _batches(self, s: int, gen: torch.Generator):
        x, y = self.data.train_x[s], self.data.train_y[s]
        perm = torch.randperm(len(y), generator=gen)
        bs = self.config.batch_size
        for b in range(0, len(y), bs):
            idx = perm[b:b + bs]
            yield self.data.normalize(x[idx], self.device), y[idx].to(self.device)

    def client_update(self, s: int, rnd: int):
        """Local training of client ``s`` from the server weights; returns ``(delta, loss, up)``
        with ``up`` the bytes the client sends, and records the local model's accuracy on the
        client's own test set."""
        cfg = self.config
        gen = torch.Generator().manual_seed(_seed(cfg.seed, "client", rnd, int(s)))
        model = self.model
        load_state_vector(model, self.w)
        model.train()
        params = list(model.parameters())
        w0 = [p.detach().clone() for p in params] if cfg.algo == "fedprox" else None
        l1_weights = [l.module.weight for l in self.gmap.layers] if cfg.algo == "fedl1" else []
        if cfg.algo == "feddrop":  # this client's structured sub-model: units kept per layer
            self.hooks.z = self.dropout_masks(s, rnd).to(self.device)
        mode = "fedpa" if cfg.algo == "fedpa" and rnd >= cfg.fedpa_burnin_rounds else "fedavg"
        samples, losses = [], []
        for epoch in range(cfg.local_epochs):
            acc, steps = None, 0
            for x, y in self._batches(s, gen):
                loss = F.cross_entropy(model(x), y)
                if w0 is not None:
                    loss = loss + 0.5 * cfg.lam * sum(((p - q) ** 2).sum() for p, q in zip(params, w0))
                for wt in l1_weights:  # FedL1, Eq. 24: lam * sum_g ||w_g||
                    loss = loss + cfg.lam * wt.reshape(wt.shape[0], -1).norm(dim=1).sum()
                model.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    for p in params:
                        p.add_(p.grad, alpha=-cfg.client_lr)
                losses.append(loss.item())
                if mode == "fedpa" and epoch >= 1:  # IASG: average the iterates of each epoch
                    v = state_vector(model)
                    acc = v.clone() if acc is None else acc.add_(v)
                    steps += 1
            if acc is not None:
                samples.append(acc / steps)
        w_s = state_vector(model)
        up = 4 * self.d
        if mode == "fedpa":
            delta = fedpa_lib.delta_dp(torch.stack(samples), self.w, cfg.rho)
        elif cfg.algo == "feddrop":
            up = 4 * self.submodel_values(self.hooks.z)
            delta = self.w - w_s  # zero outside the sub-model: the server scatters it back
        elif cfg.algo == "fedl1":  # Eq. 25: groups with ||w_g|| <= lam are zeroed and not sent
            keep = (self.gmap.norms(w_s) > cfg.lam).float()
            w_s = w_s * self.gmap.expand(keep)
            load_state_vector(model, w_s)
            up = sparse_bytes(self.gmap.values_on(keep), self.gmap.num_groups)
            delta = self.w - w_s
        else:
            delta = self.w - w_s
        self.local_acc[s] = self.accuracy(model, self.data.test_x[s], self.data.test_y[s])
        if cfg.algo == "feddrop":
            self.hooks.z = None
        return delta, float(np.mean(losses)), up

    def dropout_masks(self, s: int, rnd: int) -> torch.Tensor:
        """FedDrop: which units client ``s`` keeps this round, a fixed share per layer, drawn at
        random (the first and the output layer use ``drop_io``, convs ``drop_conv``, hidden fc
        layers ``drop_fc``)."""
        cfg, layers = self.config, self.gmap.layers
        gen = torch.Generator().manual_seed(_seed(cfg.seed, "drop", rnd, int(s)))
        masks = []
        for k, layer in enumerate(layers):
            rate = cfg.drop_io if k in (0, len(layers) - 1) else (
                cfg.drop_conv if isinstance(layer.module, torch.nn.Conv2d) else cfg.drop_fc)
            keep = max(1, round(layer.groups * (1 - rate)))
            m = torch.zeros(layer.groups)
            m[torch.randperm(layer.groups, generator=gen)[:keep]] = 1
            masks.append(m)
        return torch.cat(masks)

    def submodel_values(self, z: torch.Tensor) -> int:
        """Parameters of the sub-model that keeps the units ``z``: each kept unit's weights to the
        kept units of the layer before (and its bias)."""
        total, prev = 0, None
        for (a, b), layer in zip(self.gmap.layer_slices, self.gmap.layers):
            kept = int(z[a:b].sum())
            w = layer.module.weight
            per_unit = w[0].numel()
            if prev is not None:  # inputs from dropped units of the previous layer are removed too
                per_unit = per_unit * prev[1] // prev[0]
            total += kept * per_unit + (kept if layer.module.bias is not None else 0)
            prev = (layer.groups, kept)
        return total

    def uses_vmap(self, clients) -> bool:
        """Train the round's clients together (torch.func.vmap) rather than one by one?

        Applies to FedAvg and FedProx, models without buffers and clients of equal size.  ``auto``
        picks it on CUDA only: on a 2-core CPU the plain loop measured faster (see
        benchmarks/engine_speed.py)."""
        mode = self.config.client_batching
        if mode == "loop" or (mode == "auto" and self.device.type != "cuda"):
            return False
        ok = (self.config.algo in ("fedavg", "fedprox") and not list(self.model.buffers())
              and len({len(self.data.train_y[int(s)]) for s in clients}) == 1)
        if mode == "vmap" and not ok:
            raise ValueError("client_batching=vmap needs fedavg or fedprox, a model without buffers "
                             "(not resnet20) and clients of equal size; use auto or loop")
        return ok

    def clients_update_vmap(self, clients, rnd: int):
        """All clients of the round in one batched step per minibatch: the same batches, the same
        SGD, as :meth:`client_update` run one by one (equal up to float round-off)."""
        from torch.func import functional_call, grad_and_value, vmap

        cfg, model = self.config, self.model
        load_state_vector(model, self.w)
        names = [n for n, _ in model.named_parameters()]
        base = {n: p.detach() for n, p in model.named_parameters()}
        C = len(clients)
        params = {n: base[n].unsqueeze(0).repeat(C, *([1] * base[n].dim())) for n in names}

        def loss_fn(p, x, y):
            loss = F.cross_entropy(functional_call(model, p, (x,)), y)
            if cfg.algo == "fedprox":
                loss = loss + 0.5 * cfg.lam * sum(((p[n] - base[n]) ** 2).sum() for n in names)
            return loss

        step = vmap(grad_and_value(loss_fn))
        gens = [torch.Generator().manual_seed(_seed(cfg.seed, "client", rnd, int(s))) for s in clients]
        losses = []
        for _ in range(cfg.local_epochs):
            iters = [self._batches(int(s), g) for s, g in zip(clients, gens)]
            for batch in zip(*iters):
                x = torch.stack([b[0] for b in batch])
                y = torch.stack([b[1] for b in batch])
                g, loss = step(params, x, y)
                params = {n: params[n] - cfg.client_lr * g[n] for n in names}
                losses.append(loss.mean().item())
        total = torch.zeros_like(self.w)
        with torch.no_grad():
            for c, s in enumerate(clients):
                for n, p in model.named_parameters():
                    p.copy_(params[n][c])
                w_s = state_vector(model)
                total += self.w - w_s
                self.local_acc[int(s)] = self.accuracy(model, self.data.test_x[int(s)], self.data.test_y[int(s)])
        return total, losses

    # ------------------------------------------------------------------ server
    def run_round(self) -> dict:
        """One round: sample, train the clients, step the server.  Raises :class:`Diverged`."""
        if self.config.algo == "fedsparse":
            return self._run_round_sparse()
        rnd = self.round
        start = time.perf_counter()
        clients = self.sample_clients(rnd)
        extra, down = {}, 4 * self.d
        if self.config.algo == "fedl1":  # the server thresholds its model before sending it too
            keep = (self.gmap.norms(self.w) > self.config.lam).float()
            server_w, self.w = self.w, self.w * self.gmap.expand(keep)
            down = sparse_bytes(self.gmap.values_on(keep), self.gmap.num_groups)
            extra["sparsity"] = float((self.gmap.sizes * (1 - keep)).sum()) / self.d
        if self.uses_vmap(clients):
            total, losses = self.clients_update_vmap(clients, rnd)
            self.bytes_down += 4 * self.d * len(clients)
            self.bytes_up += 4 * self.d * len(clients)
        else:
            total, losses = torch.zeros_like(self.w), []
            for s in clients:
                delta, loss, up = self.client_update(int(s), rnd)
                total += delta
                losses.append(loss)
                self.bytes_down += up if self.config.algo == "feddrop" else down  # a sub-model goes both ways
                self.bytes_up += up
        if self.config.algo == "fedl1":
            total, self.w = total + len(clients) * (server_w - self.w), server_w  # differences to the server's own w
        step, opt_state = self.opt.update(total / len(clients), self.opt_state)
        w = self.w - step
        if not torch.isfinite(w).all():
            raise Diverged(f"round {rnd + 1}: the server weights are no longer finite (NaN or inf); "
                           "lower --client-lr or --server-lr")
        self.w, self.opt_state = w, opt_state
        self.round = rnd + 1
        self.seconds += time.perf_counter() - start
        return {"round": self.round, "train_loss": float(np.mean(losses)), **extra}

    # ------------------------------------------------------------------ FedSparse
    def theta(self) -> torch.Tensor:
        """The server's gate probabilities ``sigmoid((||w_g|| - softplus(v_g)) / T)``."""
        from emfl.nn.gates import gate_prob

        return gate_prob(self.gmap.norms(self.w), self.v, SPARSE_T)

    def client_update_sparse(self, s: int, rnd: int, theta: torch.Tensor):
        """FedSparse's client (Algorithm 2; local loss Eq. 41 as a mean over the batch).

        Weights: SGD on the data loss under hard-concrete gates with ``P(z > 0) = pi``.
        Thresholds ``v_s``: Adamax on the same loss plus ``lam0 sum_g |g| pi_g`` (the L0 cost of
        every value in the group) minus ``1e-4`` times the gate cross-entropy to ``theta``.
        Returns the weight contribution ``z (w - w_s)``, the threshold gradient, the bytes sent up,
        the mean loss and ``|pi - theta|``."""
        from emfl.nn import gates

        cfg, model, gmap = self.config, self.model, self.gmap
        gen = torch.Generator().manual_seed(_seed(cfg.seed, "client", rnd, int(s)))
        load_state_vector(model, self.w)
        model.train()
        params = list(model.parameters())
        v_s = self.v.clone().requires_grad_(True)
        opt_v = torch.optim.Adamax([v_s], lr=SPARSE_CLIENT_V_LR)
        sizes = gmap.sizes.to(self.device).float()
        n_s = len(self.data.train_y[s]) if cfg.sparse_reg == "example" else 1  # see RunConfig.sparse_reg
        losses = []
        for _ in range(cfg.local_epochs):
            for x, y in self._batches(s, gen):
                pi = gates.gate_prob(torch.cat([group_norms(l) for l in gmap.layers]), v_s, SPARSE_T)
                self.hooks.z = gates.hard_concrete_sample(gates.log_alpha_for(pi), generator=gen)
                loss = F.cross_entropy(model(x), y)
                reg = sparse_regulariser(pi, theta, sizes, cfg.lam0, n_s)
                model.zero_grad(set_to_none=True)
                opt_v.zero_grad()
                (loss + reg).backward()
                with torch.no_grad():
                    for p in params:
                        if p.grad is not None:
                            p.add_(p.grad, alpha=-cfg.client_lr)
                opt_v.step()
                losses.append(loss.item())
        with torch.no_grad():
            w_s = state_vector(model)
            pi = gates.gate_prob(gmap.norms(w_s), v_s, SPARSE_T)
            z = torch.bernoulli(pi.cpu(), generator=gen).to(self.device)  # the exact binary upload
            self.hooks.z = z
            self.local_acc[s] = self.accuracy(model, self.data.test_x[s], self.data.test_y[s])
            self.hooks.z = None
            contribution = gmap.expand(z) * (self.w - w_s)
            v_grad = gates.server_v_gradient(z, theta, self.v, SPARSE_T)
        up = sparse_bytes(gmap.values_on(z), gmap.num_groups)
        return contribution, v_grad, up, float(np.mean(losses)), (pi - theta).abs()

    def _run_round_sparse(self) -> dict:
        """Algorithm 1: prune, send the surviving groups, collect sparse updates, step w and v."""
        rnd = self.round
        start = time.perf_counter()
        theta = self.theta()
        keep = (theta > SPARSE_PRUNE).float()
        self.w = self.w * self.gmap.expand(keep)  # prune the global model (a no-op after round 1)
        theta = self.theta()
        down = sparse_bytes(self.gmap.values_on(keep), 0, int(keep.sum()))
        clients = self.sample_clients(rnd)
        total_w, total_v = torch.zeros_like(self.w), torch.zeros_like(self.v)
        losses, tv = [], []
        for s in clients:
            contribution, v_grad, up, loss, dist = self.client_update_sparse(int(s), rnd, theta)
            total_w += contribution
            total_v += v_grad
            losses.append(loss)
            tv.append(dist)
            self.bytes_down += down
            self.bytes_up += up
        step, opt_state = self.opt.update(total_w / len(clients), self.opt_state)
        v_step, v_state = self.v_opt.update(total_v / len(clients), self.v_state)
        w, v = self.w - step, self.v - v_step
        if not (torch.isfinite(w).all() and torch.isfinite(v).all()):
            raise Diverged(f"round {rnd + 1}: the server weights are no longer finite (NaN or inf); "
                           "lower --client-lr or --server-lr")
        self.w, self.opt_state, self.v, self.v_state = w, opt_state, v, v_state
        pruned = (self.theta() <= SPARSE_PRUNE).float()
        self.w = self.w * self.gmap.expand(1 - pruned)  # the server model is always the pruned one
        self.round = rnd + 1
        self.seconds += time.perf_counter() - start
        tv = torch.stack(tv)
        sparsity = float((self.gmap.sizes.to(pruned.device) * pruned).sum()) / self.d
        return {"round": self.round, "train_loss": float(np.mean(losses)), "sparsity": sparsity,
                "tv_mean": float(tv.mean()), "tv_max": float(tv.max())}

    @torch.no_grad()
    def accuracy(self, model, x, y, batch: int = 1000) -> float:
        if len(y) == 0:
            return float("nan")
        model.eval()
        correct = 0
        for b in range(0, len(y), batch):
            xb = self.data.normalize(x[b:b + batch], self.device)
            if next(model.parameters()).is_contiguous(memory_format=torch.channels_last) and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            correct += (model(xb).argmax(1).cpu() == y[b:b + batch]).sum().item()
        model.train()
        return correct / len(y)

    def evaluate(self, extra: dict | None = None) -> dict:
        """Global and local accuracy now, with the communication so far; appended to history."""
        if self._test is None:
            self._test = self.data.test_union()
        w = self.w
        if self.config.algo == "fedl1":  # the model the server sends: thresholded (Eq. 25)
            w = w * self.gmap.expand((self.gmap.norms(w) > self.config.lam).float())
        load_state_vector(self.eval_model, w)
        seen = ~np.isnan(self.local_acc)
        record = {
            "round": self.round,
            "global_acc": self.accuracy(self.eval_model, *self._test),
            "local_acc": float(np.mean(self.local_acc[seen])) if seen.any() else float("nan"),
            "local_clients": int(seen.sum()),
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "cum_gib": (self.bytes_down + self.bytes_up) / GIB,
            "seconds": round(self.seconds, 3),
        }
        if extra:
            record.update(extra)
        self.history.append(record)
        return record


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, tuple):
        return tuple(_to_cpu(o) for o in obj)
    return obj


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return tuple(_to_device(o, device) for o in obj)
    return obj
