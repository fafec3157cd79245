"""The round loop: sampling, seeding, timing, the divergence check, metrics and the state a
checkpoint holds.  It knows no algorithm: the run's algorithm (``config.algo``, looked up in the
registry :mod:`emfl.nn.algorithms`) supplies the server's message, the clients' updates and the
server's M-step (the protocol of :mod:`emfl.nn.algorithms.base`, after the paper's Algorithms 1
and 2).

Each round, with the EM paper's protocol (its Appendix A), the server samples
``clients_per_round`` clients without replacement (with replacement across rounds) and sends them
its message; each client trains (SGD, lr 0.05, one local epoch, batch 64 on CIFAR-10 and 20 on
FEMNIST) and sends a message back; the server's M-step aggregates them, typically as one Adam
step on the mean difference.

Metrics: *global accuracy* is the server model on the union of all clients' test sets; *local
accuracy* is each client's last communicated model (the one it sent up, after its local
training) on its own test set, averaged over the clients that have taken part so far.  It is
measured when the client trains, so no client model needs to be stored.  Communication is the
size of the messages (:mod:`emfl.nn.messages`), down and up, for every sampled client.

Randomness is derived from ``(seed, round, client)``, so a run resumed from a checkpoint repeats
an uninterrupted run bit for bit on the same device.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emfl.nn import algorithms
from emfl.nn.algorithms import ALGORITHMS, PRESETS
from emfl.nn.algorithms.base import Algorithm, ClientRuntime, Setup, batched_client_updates
from emfl.nn.config import RunConfig
from emfl.nn.models import make_model
from emfl.nn.seeding import ClientJob, derive_seed, sample_clients
from emfl.nn.state import load_state_vector, state_vector

__all__ = ["Engine", "RoundPlan", "Diverged", "resolve_device", "GIB"]

GIB = 2**30


class Diverged(RuntimeError):
    """The server weights stopped being finite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no GPU; use --device cpu or auto")
    return torch.device(name)


@dataclass
class RoundPlan:
    """A round between :meth:`Engine.begin_round` and :meth:`Engine.end_round`: round ``rnd``
    (0-based), its clients, the server state and message, each client's job and message, and the
    replies received so far."""

    rnd: int
    clients: np.ndarray
    state: dict
    down: Any
    jobs: list
    msgs: list
    start: float
    results: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)
    known: dict = field(default_factory=dict)


class Engine:
    """The server and its clients for one run: the model, the algorithm and its server state,
    what the clients keep, the metrics."""

    def __init__(self, config: RunConfig, data):
        if config.clients_per_round > data.num_clients:
            raise ValueError(f"clients_per_round is {config.clients_per_round} but the data set has "
                             f"{data.num_clients} clients: pass --clients-per-round {data.num_clients} or fewer")
        self.config = config
        self.data = data
        self.device = resolve_device(config.device)
        torch.manual_seed(derive_seed(config.seed, "init"))
        # training and evaluation in channels-last memory (the same values, laid out pixel by pixel):
        # faster convolutions and pooling on the CPU (a dense round 0.83x as long on CIFAR-10, 0.76x
        # on FEMNIST: benchmarks/sliced_speed.py); the state vector keeps the logical order
        self.dtype = torch.float64 if config.precision == "float64" else torch.float32
        self.model = make_model(config.model, data.input_shape, data.num_classes).to(self.device, self.dtype)
        self.model = self.model.to(memory_format=torch.channels_last)
        w = state_vector(self.model).clone()
        self.eval_model = copy.deepcopy(self.model)
        self.d = w.numel()
        self.algorithm = algorithms.get(config.algo)(config.params, Setup(self.model, config, data.num_clients,
                                                                          self.device))
        # what a client's update may use: the network it trains, its data, its SGD
        self.runtime = ClientRuntime(self.model, self.batches, lambda s: len(self.data.train_y[s]), config.client_lr,
                                     config.local_epochs, self.device)
        self.server = self.algorithm.init(w)  # the prior's parameters and the optimisers' states
        self.memory: dict = {}  # client -> what it keeps between the rounds it takes part in
        self.known: dict = {}  # client -> what the server kept of its replies (Algorithm.remember)
        self.round = 0
        self.local_acc = np.full(data.num_clients, np.nan)
        self.bytes_down = 0
        self.bytes_up = 0
        self.seconds = 0.0
        self.history: list = []
        self.observers: list = []  # e.g. emfl.nn.probes.InfoProbe: see each client's model and the server's
        self._test = None

    @property
    def w(self) -> torch.Tensor:
        """The server's weights (the state vector of its model)."""
        return self.server["w"]

    @w.setter
    def w(self, value: torch.Tensor) -> None:
        self.server = {**self.server, "w": value}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "round": self.round, "server": _to_cpu(self.server),
                "memory": {int(s): _to_cpu(m) for s, m in self.memory.items()},
                "known": {int(s): _to_cpu(m) for s, m in self.known.items()},
                "local_acc": torch.from_numpy(self.local_acc.copy()),
                "bytes_down": self.bytes_down, "bytes_up": self.bytes_up, "seconds": self.seconds,
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.server = _to_device(state["server"], self.device)
        self.memory = {int(s): _to_device(m, self.device) for s, m in state["memory"].items()}
        if "known" not in state and type(self.algorithm).remember is not Algorithm.remember:
            raise ValueError(f"this checkpoint predates what the {self.algorithm.title} server keeps of each client; "
                             "start the run again without --resume")
        self.known = {int(s): _to_device(m, self.device) for s, m in state.get("known", {}).items()}
        self.local_acc = torch.as_tensor(state["local_acc"], dtype=torch.float64).numpy().copy()
        self.bytes_down = int(state["bytes_down"])
        self.bytes_up = int(state["bytes_up"])
        self.seconds = float(state["seconds"])
        self.history = list(state["history"])

    # ------------------------------------------------------------------ clients
    def sample_clients(self, rnd: int) -> np.ndarray:
        return sample_clients(self.config.seed, rnd, self.data.num_clients, self.config.clients_per_round)

    def batches(self, s: int, gen: torch.Generator):
        """Client ``s``'s minibatches, normalised, on the device, in the order ``gen`` draws."""
        x, y = self.data.train_x[s], self.data.train_y[s]
        perm = torch.randperm(len(y), generator=gen)
        bs = self.config.batch_size
        for b in range(0, len(y), bs):
            idx = perm[b:b + bs]
            xb = self.data.normalize(x[idx], self.device).to(self.dtype)
            if xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, y[idx].to(self.device)

    def uses_vmap(self, clients) -> bool:
        """Train the round's clients together (torch.func.vmap) rather than one by one?

        Applies to every algorithm whose client update is pure (``pure_client``), on models
        without buffers and clients of equal size.  ``auto`` picks it on CUDA only: on a 2-core CPU
        the plain loop measured faster (see benchmarks/engine_speed.py)."""
        mode = self.config.client_batching
        if mode == "loop" or (mode == "auto" and self.device.type != "cuda"):
            return False
        ok = (self.algorithm.pure_client and not list(self.model.buffers())
              and len({len(self.data.train_y[int(s)]) for s in clients}) == 1)
        if mode == "vmap" and not ok:
            pure = ", ".join(name for name, a in ALGORITHMS.items() if a.pure_client)
            raise ValueError(f"client_batching=vmap needs an algorithm whose client update is pure ({pure}), "
                             "a model without buffers (not resnet20) and clients of equal size; use auto or loop")
        return ok

    # ------------------------------------------------------------------ a round
    def run_round(self) -> dict:
        """One round: sample, send, train the clients, the M-step.  Raises :class:`Diverged`.

        The clients train here, in this process; :meth:`begin_round`, :meth:`receive` and
        :meth:`end_round` are the server's side alone, for a loop whose clients are elsewhere
        (:mod:`emfl.flower`)."""
        algo = self.algorithm
        plan = self.begin_round()
        if self.uses_vmap(plan.clients):
            updates = batched_client_updates(algo, self.runtime, plan.msgs, plan.jobs)
        else:
            updates = ((job, msg, algo.client_update(msg, job, self.runtime)) for job, msg in zip(plan.jobs, plan.msgs))
        for job, msg, result in updates:
            acc = self.local_accuracy(job.s, result.local)
            watched = time.perf_counter()
            for o in self.observers:
                o.client_model(self, plan.rnd + 1, int(job.s), self.eval_model)
            plan.start += time.perf_counter() - watched  # observing is not training
            self.receive(plan, job, msg, result, acc)
        return self.end_round(plan)

    def begin_round(self) -> "RoundPlan":
        """The server's first half of a round: sample the clients, build their jobs and the
        messages they receive."""
        algo, rnd = self.algorithm, self.round
        start = time.perf_counter()
        clients = self.sample_clients(rnd)
        state, down = algo.server_message(self.server)
        jobs = [ClientJob(self.config.seed, rnd, s, self.memory.get(int(s)), self.known.get(int(s))) for s in clients]
        msgs = [algo.message_to(down, job) for job in jobs]
        return RoundPlan(rnd, clients, state, down, jobs, msgs, start)

    def receive(self, plan: "RoundPlan", job: ClientJob, msg, result, local_acc: float) -> None:
        """Client ``job.s``'s reply: its result, the accuracy of its local model on its own test
        set, the bytes down (``msg``) and up (``result.up``)."""
        self.local_acc[job.s] = local_acc
        if result.memory is not None:
            plan.kept[job.s] = result.memory
        known = self.algorithm.remember(job.known, result.up)
        if known is not None:
            plan.known[job.s] = known
        self.bytes_down += msg.nbytes
        self.bytes_up += result.up.nbytes
        plan.results.append(result)

    def end_round(self, plan: "RoundPlan") -> dict:
        """The M-step from the replies received, in the order the clients were sampled."""
        algo = self.algorithm
        state, info = algo.m_step(plan.state, plan.down, plan.results)
        if not all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor)):
            raise Diverged(f"round {plan.rnd + 1}: the server weights are no longer finite (NaN or inf); "
                           "lower --client-lr or --server-lr")
        self.server = state
        self.memory.update(plan.kept)
        self.known.update(plan.known)
        self.round = plan.rnd + 1
        self.seconds += time.perf_counter() - plan.start
        if self.observers:
            load_state_vector(self.eval_model, algo.server_model(self.server))
            for o in self.observers:
                o.server_model(self, self.round, self.eval_model)
        return {"round": self.round, "train_loss": float(np.mean([r.loss for r in plan.results])), **info}

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def accuracy(self, model, x, y, batch: int = 1000) -> float:
        if len(y) == 0:
            return float("nan")
        model.eval()
        correct = 0
        for b in range(0, len(y), batch):
            xb = self.data.normalize(x[b:b + batch], self.device).to(next(model.parameters()).dtype)
            if next(model.parameters()).is_contiguous(memory_format=torch.channels_last) and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            correct += (model(xb).argmax(1).cpu() == y[b:b + batch]).sum().item()
        model.train()
        return correct / len(y)

    def local_accuracy(self, s: int, local: torch.Tensor) -> float:
        """The accuracy of client ``s``'s local model (a state vector) on its own test set; the
        model stays loaded in ``eval_model``."""
        load_state_vector(self.eval_model, local)
        return self.accuracy(self.eval_model, self.data.test_x[s], self.data.test_y[s])

    def evaluate(self, extra: dict | None = None) -> dict:
        """Global and local accuracy now, with the communication so far; appended to history."""
        if self._test is None:
            self._test = self.data.test_union()
        load_state_vector(self.eval_model, self.algorithm.server_model(self.server))
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
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_cpu(o) for o in obj)
    return obj


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    return obj
