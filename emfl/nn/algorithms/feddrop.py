"""FedDrop: federated dropout (Caldas et al.), a structurally smaller model per client.

In the EM reading (the paper, Section 4) the gates ``z`` are global with a fixed keep probability
for the prior and the posterior alike: nothing about them is learned, and each client trains the
sub-model its draw keeps.

* Server's message to client ``s``: the sub-model of ``w`` that keeps a fixed share of the units
  of every layer (``drop_io`` in the first and the output layer, ``drop_conv`` in convolutions,
  ``drop_fc`` in hidden fc layers), drawn per client and round; dropped rows and columns are
  removed, not zeroed (:class:`~emfl.nn.messages.SubModel`).
* Client (E-step): SGD on the mean batch loss of the sub-model (as FedAvg).
* Client's message: the trained sub-model.
* Server (M-step): as FedAvg; outside a client's sub-model its difference is zero (the server
  scatters the sub-model back).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from emfl.nn.algorithms.base import ClientResult, local_sgd

from emfl.nn.settings import check_rate, setting
from emfl.nn.algorithms.fedavg import FedAvg
from emfl.nn.groups import GateHooks, GroupMap
from emfl.nn.messages import SubModel
from emfl.nn.state import load_state_vector, state_vector
from emfl.nn.slicing import Subnets

__all__ = ["FedDrop", "Params"]


@dataclass(frozen=True)
class Params:
    drop_conv: float = setting(0.1, "share of conv filters a client drops (the paper, CIFAR-10: 0.1)")
    drop_fc: float = setting(0.5, "share of hidden fc units dropped (CIFAR-10: 0.5)")
    drop_io: float = setting(0.01, "share dropped in the input and output layers")

    def __post_init__(self):
        for name in ("drop_conv", "drop_fc", "drop_io"):
            check_rate(name, getattr(self, name))


class FedDrop(FedAvg):
    name = "feddrop"
    title = "FedDrop"
    Params = Params
    pure_client = False  # the sub-model differs per client

    @classmethod
    def check(cls, config) -> None:
        if config.model == "resnet20":
            raise ValueError("feddrop builds sub-models of a chain of layers: use lenet5 or lenet5-classic")

    def __init__(self, params, setup):
        super().__init__(params, setup)
        self.group_map = GroupMap(setup.model, prune_output=True)
        self.hooks = GateHooks(self.group_map)  # on the model clients train
        self.subnets = Subnets(setup.model, self.group_map)  # a client trains its sub-model's units only

    def units(self, job) -> torch.Tensor:
        """Which units client ``job.s`` keeps this round: a fixed share per layer, drawn at random."""
        p, layers = self.params, self.group_map.layers
        gen = job.generator("drop")
        masks = []
        for k, layer in enumerate(layers):
            rate = p.drop_io if k in (0, len(layers) - 1) else (
                p.drop_conv if isinstance(layer.module, torch.nn.Conv2d) else p.drop_fc)
            keep = max(1, round(layer.groups * (1 - rate)))
            m = torch.zeros(layer.groups)
            m[torch.randperm(layer.groups, generator=gen)[:keep]] = 1
            masks.append(m)
        return torch.cat(masks)

    def receiver(self, job, sent=None) -> dict:
        # both ends draw the kept units from the seed; the server knows the values outside them
        return {"group_map": self.group_map, "units": self.units(job), "base": None if sent is None else sent.values}

    def message_to(self, down, job) -> SubModel:
        return SubModel(down.values, self.units(job), self.group_map)

    def client_update(self, msg: SubModel, job, rt) -> ClientResult:
        model, units = rt.model, msg.units.to(rt.device)
        sub = self.subnet(units)
        if sub is None:  # the dense model, its dropped units' outputs multiplied by 0
            load_state_vector(model, msg.values)
            model.train()
            self.hooks.z = units  # this client's sub-model: the units kept
            try:
                losses = local_sgd(rt, job, lambda x, y: F.cross_entropy(model(x), y))
            finally:
                self.hooks.z = None  # the model is whole again
            w_s = state_vector(model)
        else:  # the sub-model itself; an output layer keeps its rows, its dropped classes gated
            sub.load(msg.values)
            sub.model.train()
            z = units[sub.units]
            losses = local_sgd(rt, job, lambda x, y: F.cross_entropy(sub.hooks.forward(sub.model, x, z), y),
                               model=sub.model)
            w_s = sub.merge(msg.values)
        # the client's local model: its sub-model, the dropped units' own values zero (their outputs are 0)
        local = w_s * self.group_map.expand(units.to(w_s.dtype))
        return ClientResult(SubModel(w_s, msg.units, self.group_map), float(np.mean(losses)), local=local)

