"""The protocol of an algorithm: a prior, a client E-step and a server M-step (the paper's
Algorithms 1 and 2), as the toy world's :class:`emfl.em.FederatedAlgorithm` reads it.

The round loop (:class:`emfl.nn.engine.Engine`) calls, each round,

1. ``state, down = algo.server_message(state)``: what the server sends (Algorithm 1 up to
   ``CLIENT(s, w, v)``; it may prune first);
2. for every sampled client ``s``: ``msg = algo.message_to(down, job)`` (what client ``s``
   receives: all of ``down`` unless it is cut per client) and ``result = algo.client_update(msg,
   job, rt)``: the client's E-step, local training on its objective, the data term plus the prior's
   penalty (Algorithm 2); ``result.up`` is the message it sends back, ``result.local`` its local
   model (the weights local accuracy is measured on);
3. ``state, info = algo.m_step(state, down, results)``: the server's M-step, aggregation, an
   optimiser step and pruning (Algorithm 1 after the loop over clients).

The two rooms meet only through messages.  The server side (``init``, ``server_message``,
``message_to``, ``m_step``, ``server_model``) sees the :class:`Setup` the algorithm was built
from; the client side (``client_update``) sees the message, its :class:`~emfl.nn.seeding.ClientJob`
(random streams, memory) and a :class:`ClientRuntime`: the network to train, the client's data,
the local learning rate and epochs, the device.  It leaves nothing behind in shared state: what
it produced is in its :class:`ClientResult`.

``algo.server_model(state)`` is the model global accuracy is measured on.  The server state is a
dict: its top-level tensors are the prior's parameters (``w``, FedSparse's thresholds ``v``,
SCAFFOLD's control variate ``c``), checked for divergence after every round; optimiser states
are tuples.  It holds only tensors, numbers, tuples and dicts, so that a checkpoint stores it as
it is.  Messages (:mod:`emfl.nn.messages`) count their own bytes.

An algorithm whose client runs SGD on a pure function of the parameters derives from
:class:`LocalSGD`: it gives ``start``, ``local_terms``, ``local_loss`` and ``finish``, and the
loop can then train a round's clients together (``torch.func.vmap``).

Compute follows the structure: an algorithm whose clients train a model with some units off
(FedSparse's pruned units, FedL1's thresholded ones, FedDrop's dropped ones) sets ``subnets``
(:class:`emfl.nn.slicing.Subnets`), and its clients then train the smaller model that leaves those
units out (:meth:`Algorithm.subnet`; run setting ``client_compute``: ``sliced``, or ``dense`` for
the masked full model, the same updates up to float round-off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emfl.nn.messages import Dense, Message
from emfl.nn.state import load_state_vector, parameter_views, state_tensors, state_vector
from emfl.optim import make_optimizer

__all__ = ["Algorithm", "LocalSGD", "ClientResult", "ClientRuntime", "Setup", "NoParams", "local_sgd",
           "batched_client_updates"]


# --------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class NoParams:
    """An algorithm without hyperparameters of its own."""


# --------------------------------------------------------------------------- the protocol


class Setup(NamedTuple):
    """What an algorithm is built from: ``model``, the network its clients train (its layers
    define the units, sub-models and gates; only its structure is read, and the algorithm's gate
    hooks attach to it); ``config``, the run's :class:`~emfl.nn.config.RunConfig`;
    ``num_clients``; ``device``."""

    model: nn.Module
    config: Any
    num_clients: int
    device: torch.device

    @property
    def d(self) -> int:
        """The length of the state vector ``w``."""
        return sum(t.numel() for t in state_tensors(self.model))


@dataclass(frozen=True)
class ClientRuntime:
    """What a client's update may use, and nothing else of the run.

    ``model``: the network to train (its weights are the client's to overwrite; the update loads
    its start from the message); ``batches(s, gen)``: client ``s``'s minibatches, normalised, on
    the device, in the order ``gen`` draws; ``num_examples(s)``: its training-set size; ``lr`` and
    ``local_epochs``: its SGD (the run settings ``client_lr``, ``local_epochs``); ``device``."""

    model: nn.Module
    batches: Callable[[int, torch.Generator], Iterator]
    num_examples: Callable[[int], int]
    lr: float
    local_epochs: int
    device: torch.device


class ClientResult(NamedTuple):
    """What one client's update produced: ``up``, the message it sends; ``loss``, its mean
    training loss; ``local``, its local model as a state vector (what local accuracy is measured
    on: a gated client's units switched off are zeros in it); ``memory``, the state the client
    keeps until it is sampled again (SCAFFOLD's control variate; None for a stateless client);
    ``stats``, diagnostics for the record that a real server would not see (FedSparse's
    ``|pi_s - theta|``)."""

    up: Message
    loss: float
    local: torch.Tensor
    memory: Any = None
    stats: Any = None


class Algorithm:
    """One federated algorithm as EM parts.  A subclass sets ``name`` (its ``--algo``), ``title``
    (the paper's name), ``Params`` (a frozen dataclass of its hyperparameters: they become
    command-line flags and flat keys of the run's config), ``PRESETS`` (named settings:
    ``{"low": {"lam0": 5e-7}}`` gives ``--algo NAME-low``) and implements the methods below.

    ``setup`` (:class:`Setup`) is what the algorithm is built from; a client's update gets its
    :class:`ClientRuntime` as an argument."""

    name = ""
    title = ""
    Params = NoParams
    PRESETS: dict = {}
    EXAMPLE: dict = {}  # settings for a short example run (tests, a first try): what it needs beyond the defaults
    pure_client = False  # True: client_update is SGD on a pure local_loss (LocalSGD), so vmap applies

    def __init__(self, params, setup: Setup):
        self.params = params
        self.setup = setup
        # Appendix A: the server feeds the mean client difference to Adam ("difference gradient")
        self.server_opt = make_optimizer(setup.config.server_opt, lr=setup.config.server_lr)
        self.subnets = None  # Subnets(model, group_map): the smaller models of the unit masks clients train

    @classmethod
    def check(cls, config) -> None:
        """Raise ValueError for settings of ``config`` this algorithm cannot run with."""

    @classmethod
    def display_name(cls, config: dict) -> str:
        """The name a plot or table gives a run of this algorithm with the flat ``config`` (as a
        history stores it): the paper's name, with the setting that tells runs apart."""
        return cls.title

    # ---- server
    def init(self, w: torch.Tensor) -> dict:
        """The server state at round 0: the prior's parameters and the optimiser's state."""
        return {"w": w, "opt": self.server_opt.init(w)}

    def server_message(self, state: dict) -> tuple:
        """``(state, down)``: what the server sends this round (the model ``w``)."""
        return state, Dense(state["w"])

    def message_to(self, down: Message, job) -> Message:
        """What client ``job.s`` receives of ``down`` (all of it, unless cut per client)."""
        return down

    def remember(self, known, up: Message):
        """What the server keeps about a client after its reply ``up``, given what it kept before
        (``known``, None at first); it comes back as ``job.known`` the next time the client is
        sampled.  None (the default): nothing."""
        return None

    def m_step(self, state: dict, down: Message, results: list) -> tuple:
        """``(state, info)``: the M-step from the clients' messages ``results[i].up``; ``info``
        holds extra fields for the round's record."""
        raise NotImplementedError

    def server_model(self, state: dict) -> torch.Tensor:
        """The server's model as it is evaluated (global accuracy)."""
        return state["w"]

    # ---- the wire
    def receiver(self, job, sent: Message | None = None) -> dict:
        """What the receiver of a message to or from client ``job.s`` knows itself, so that the
        wire leaves it out: keywords of :func:`emfl.nn.wire.decode` (``group_map``: the model's group
        map; ``units``: a sub-model's kept units; ``base``: the values outside it).  ``sent``: on
        the server, the message it sent this client this round (None on the client)."""
        return {}

    # ---- client
    def client_update(self, msg: Message, job, rt: ClientRuntime) -> ClientResult:
        """The client's E-step from what it received, trained on ``rt.model`` with ``rt``'s data."""
        raise NotImplementedError

    # ---- helpers
    def subnet(self, keep: torch.Tensor | None):
        """The :class:`~emfl.nn.slicing.Subnet` a client trains when the units with ``keep == 0``
        are off; None: the full model (nothing to cut, no ``subnets``, or ``client_compute = dense``)."""
        if keep is None or self.subnets is None or self.setup.config.client_compute != "sliced":
            return None
        return self.subnets(keep)

    def difference_step(self, state: dict, total: torch.Tensor, n: int) -> tuple:
        """One server-optimiser step on the mean difference ``total / n``: ``(w, opt_state)``."""
        step, opt = self.server_opt.update(total / n, state["opt"])
        return state["w"] - step, opt


def local_sgd(rt: ClientRuntime, job, loss_fn, *, model=None, on_step=None, keep=None, after_step=None) -> list:
    """The client's SGD, the one loop every eager client update runs: ``rt.local_epochs`` passes
    over client ``job.s``'s minibatches (in the order ``job.gen`` draws), each a step of size
    ``rt.lr`` on the parameters of ``model`` (default ``rt.model``) down the gradient of
    ``loss_fn(x, y)``.  Returns the losses.

    ``loss_fn`` returns the objective, or ``(objective, loss to report)`` when the reported loss is
    only its data term.  Hooks: ``keep`` (one tensor per parameter) multiplies each gradient
    (FedSpa's mask: only the weights it holds move); ``after_step()`` runs, without autograd,
    right after each step (FedSparse's Adamax step on its thresholds, which are trained alongside
    and must clear their own gradient); ``on_step(epoch)`` runs after that (FedPA's iterate
    averages, FedSpa's last gradient)."""
    model = model if model is not None else rt.model
    params = list(model.parameters())
    losses = []
    for epoch in range(rt.local_epochs):
        for x, y in rt.batches(job.s, job.gen):
            out = loss_fn(x, y)
            objective, loss = out if isinstance(out, tuple) else (out, out)
            model.zero_grad(set_to_none=True)
            objective.backward()
            with torch.no_grad():
                if keep is None:
                    for p in params:
                        if p.grad is not None:
                            p.add_(p.grad, alpha=-rt.lr)
                else:
                    for p, k in zip(params, keep):
                        p.add_(p.grad * k, alpha=-rt.lr)
                if after_step is not None:
                    after_step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(epoch)
    return losses


class LocalSGD(Algorithm):
    """A client that starts from what the server sent (``w_s <- w``, Algorithm 2), runs SGD on
    ``local_loss``, a pure function of the parameters, and then ``finish``es its message.

    ``local_loss(p, x, y, terms)`` is the negative local objective on one batch: the data term on
    the parameters ``p`` (a dict name -> tensor) plus what the algorithm adds to it (the prior's
    penalty, SCAFFOLD's drift correction), whose per-client tensors ``local_terms(msg, job, sub)``
    gives.  Being pure, it can be trained for all of a round's clients
    at once (:func:`batched_client_updates`).

    ``structure(msg)``: the unit mask of the model the client trains, when some units are off
    (None: all on); the client then trains the smaller model (:meth:`Algorithm.subnet`), and
    ``local_terms`` cuts its per-unit tensors to ``sub.units``."""

    pure_client = True
    net = None  # the module the data term runs (the runtime's model, or the smaller model the client trains)

    def start(self, msg: Message) -> torch.Tensor:
        """The client's starting weights: the server's ``w``."""
        return msg.values

    def structure(self, msg: Message) -> torch.Tensor | None:
        """The unit mask of the model the client trains (None: every unit on)."""
        return None

    def local_terms(self, msg: Message, job, sub=None) -> dict:
        """The per-client tensors ``local_loss`` reads besides the parameters (a dict, possibly
        empty: FedProx's prior mean, SCAFFOLD's correction ``c - c_i``, FedL1's unsent norms),
        shaped for the smaller model ``sub`` when there is one."""
        return {}

    def data_loss(self, p: dict, x, y) -> torch.Tensor:
        """The mean cross-entropy of the batch under the parameters ``p``."""
        from torch.func import functional_call

        return F.cross_entropy(functional_call(self.net if self.net is not None else self.setup.model, p, (x,)), y)

    def local_loss(self, p: dict, x, y, terms: dict) -> torch.Tensor:
        return self.data_loss(p, x, y)

    def finish(self, msg: Message, job, w_s: torch.Tensor, losses: list, rt: ClientRuntime) -> ClientResult:
        """The message back once training is done (the model ``w_s``, also the local model);
        ``losses`` holds one loss per local step."""
        return ClientResult(Dense(w_s), float(np.mean(losses)), local=w_s)

    def client_update(self, msg: Message, job, rt: ClientRuntime) -> ClientResult:
        sub = self.subnet(self.structure(msg))
        net = rt.model if sub is None else sub.model
        w = self.start(msg)
        load_state_vector(net, w if sub is None else sub.values(w))
        net.train()
        terms = self.local_terms(msg, job, sub)
        p = dict(net.named_parameters())
        self.net = net
        try:
            losses = local_sgd(rt, job, lambda x, y: self.local_loss(p, x, y, terms), model=net)
        finally:
            self.net = None
        w_s = state_vector(net) if sub is None else sub.merge(w)
        return self.finish(msg, job, w_s, losses, rt)


def _stack(trees: list):
    """Stack a list of equally shaped dicts (of dicts) of tensors along a new first axis."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _stack([t[k] for t in trees]) for k in first}
    return torch.stack(trees)


def batched_client_updates(algo: LocalSGD, rt: ClientRuntime, msgs: list, jobs: list):
    """All of a round's clients of a :class:`LocalSGD` algorithm in one batched SGD step per
    minibatch (``torch.func.vmap``): the same batches and the same SGD as
    ``algo.client_update`` one by one, equal up to float round-off.  Yields ``(job, msg,
    result)`` per client."""
    from torch.func import grad_and_value, vmap

    keeps = [algo.structure(m) for m in msgs]
    if any(k is not None for k in keeps) and not all(k is not None and torch.equal(k, keeps[0]) for k in keeps):
        raise ValueError("batched clients must train the same structure (one unit mask for the round)")
    sub = algo.subnet(keeps[0])
    model, lr = rt.model if sub is None else sub.model, rt.lr
    names = [n for n, _ in model.named_parameters()]
    ws = [algo.start(m) for m in msgs]
    starts = [parameter_views(model, w if sub is None else sub.values(w)) for w in ws]
    params = {n: torch.stack([s[n] for s in starts]).detach() for n in names}
    terms = _stack([algo.local_terms(m, j, sub) for m, j in zip(msgs, jobs)])
    model.train()
    step = vmap(grad_and_value(algo.local_loss))
    losses = []
    algo.net = model
    try:
        for _ in range(rt.local_epochs):
            iters = [rt.batches(j.s, j.gen) for j in jobs]
            for batch in zip(*iters):
                x = torch.stack([b[0] for b in batch])
                y = torch.stack([b[1] for b in batch])
                g, loss = step(params, x, y, terms)
                params = {n: params[n] - lr * g[n] for n in names}
                losses.append(loss.detach())
    finally:
        algo.net = None
    per_client = torch.stack(losses).cpu().double()  # (steps, clients)
    for c, (job, msg, w) in enumerate(zip(jobs, msgs, ws)):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n][c])
        w_s = state_vector(model) if sub is None else sub.merge(w)
        yield job, msg, algo.finish(msg, job, w_s, per_client[:, c].tolist(), rt)
