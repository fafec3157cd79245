"""FedL1: hard-EM with a group-Laplace prior, the paper's L1 baseline (Eq. 24-25).

Prior: ``p(phi_s) ~ exp(-lam sum_g ||phi_sg||_2)`` over the groups of :mod:`emfl.nn.groups`
(a conv filter, an fc neuron; the output layer stays dense).

* Server's message: its model with every unit of ``||w_g|| <= lam`` switched off (Eq. 25): the
  values still alive (a switched-off unit takes its own group and every weight that reads it) and a
  mask bit per unit (:class:`~emfl.nn.messages.GroupSparse`).
* Client (E-step, Eq. 24): SGD on the mean batch loss plus ``lam sum_g ||phi_sg||``.
* Client's message: its model thresholded the same way (Eq. 25), group-sparse.
* Server (M-step): the difference gradient to its own, unthresholded ``w``:
  ``mean_s (w - phi_s)``, one optimiser step.  A unit the client switched off is zero (Eq. 25's
  posterior mode); a weight that reads such a unit was not sent and carries no information, so
  its difference is 0.  The record's ``sparsity`` is the structural share of values the round's
  message left out, ``sparsity_own`` the share of the switched-off units' own groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emfl.nn.algorithms.base import ClientResult

from emfl.nn.settings import check_positive, setting
from emfl.nn.algorithms.fedavg import FedAvg
from emfl.nn.groups import GroupMap
from emfl.nn.messages import Bundle, GroupSparse, PerGroup
from emfl.nn.state import load_state_vector
from emfl.nn.slicing import Subnets

__all__ = ["FedL1", "Params"]


@dataclass(frozen=True)
class Params:
    lam: float = setting(0.0, "group-L1 strength lam and send threshold (Eq. 24-25; the paper: 2e-3 "
                              "CIFAR-10, 1e-3 FEMNIST)")

    def __post_init__(self):
        check_positive("lam", self.lam,
                       "fedl1 needs --lam > 0 (group-L1 strength; the paper: 2e-3 CIFAR-10, 1e-3 FEMNIST)")


class FedL1(FedAvg):
    name = "fedl1"
    title = "FedL1"
    Params = Params
    EXAMPLE = {"lam": 0.01}

    def __init__(self, params, setup):
        super().__init__(params, setup)
        self.group_map = GroupMap(setup.model)
        self.subnets = Subnets(setup.model, self.group_map)  # a client trains only the units switched on

    def receiver(self, job, sent=None) -> dict:
        return {"group_map": self.group_map}  # places the group-sparse values

    def threshold(self, w: torch.Tensor, unsent_sq=None) -> tuple:
        """Eq. 25: ``(w with every unit of ||w_g|| <= lam switched off, the mask of the kept units)``;
        an off unit's own group and the weights that read it are zeroed.  ``unsent_sq``: the
        squares of each row's values that were not received (:meth:`GroupMap.unsent_sq`)."""
        keep = (self.group_map.norms(w, unsent_sq) > self.params.lam).float()
        return w * self.group_map.alive(keep), keep

    def server_message(self, state: dict) -> tuple:
        # the surviving values and a mask bit per unit; per surviving unit, the sum of squares of
        # its dead inputs, so that the client's norms ||w_g|| (penalty and threshold) are the server's
        w, keep = self.threshold(state["w"])
        return state, Bundle(w=GroupSparse(w, keep, self.group_map),
                             unsent=PerGroup(self.group_map.unsent_sq(state["w"], keep), keep))

    def start(self, msg: Bundle) -> torch.Tensor:
        return msg["w"].values

    def structure(self, msg: Bundle) -> torch.Tensor:
        return msg["w"].mask  # the units switched off stay off: their own values and inputs are 0

    def local_terms(self, msg: Bundle, job, sub=None) -> dict:
        u = msg["unsent"].values.sqrt()
        group_map = self.group_map if sub is None else sub.group_map
        if sub is not None:
            u = u[sub.units]
        return {"unsent": {l.name: u[a:b] for l, (a, b) in zip(group_map.layers, group_map.layer_slices)}}

    def local_loss(self, p: dict, x, y, terms: dict):
        loss = self.data_loss(p, x, y)
        for layer in self.group_map.layers:  # Eq. 24: lam sum_g ||w_g||, the unsent inputs included
            wt = p[f"{layer.name}.weight"]
            rows = torch.cat([wt.reshape(wt.shape[0], -1), terms["unsent"][layer.name].unsqueeze(1)], dim=1)
            loss = loss + self.params.lam * torch.linalg.vector_norm(rows, dim=1).sum()
        return loss

    def finish(self, msg, job, w_s: torch.Tensor, losses: list, rt) -> ClientResult:
        w_s, keep = self.threshold(w_s, msg["unsent"].values)
        return ClientResult(GroupSparse(w_s, keep, self.group_map), float(np.mean(losses)), local=w_s)  # the one sent

    def m_step(self, state: dict, down, results: list) -> tuple:
        w = state["w"]
        total = torch.zeros_like(w)
        for r in results:  # differences to the server's own w; none where nothing was sent
            unsent = (r.up.alive == 0) & ~self.group_map.own_off(r.up.mask)
            total += torch.where(unsent, torch.zeros_like(w), w - r.up.values)
        w, opt = self.difference_step(state, total, len(results))
        return {**state, "w": w, "opt": opt}, self.group_map.sparsity(down["w"].mask)

    def server_model(self, state: dict) -> torch.Tensor:
        return self.threshold(state["w"])[0]  # the model the server sends (Eq. 25)
