"""FedL1: hard-EM with a group-Laplace prior, the paper's L1 baseline (Eq. 24-25).

Prior: ``p(phi_s) ~ exp(-lam sum_g ||phi_sg||_2)`` over the groups of :mod:`emfl.nn.groups`
(a conv filter, an fc neuron; the output layer stays dense).

* Server's message: its model with every group of ``||w_g|| <= lam`` zeroed (Eq. 25): the
  surviving groups and a mask bit per group (:class:`~emfl.nn.messages.GroupSparse`).
* Client (E-step, Eq. 24): SGD on the mean batch loss plus ``lam sum_g ||phi_sg||``.
* Client's message: its model thresholded the same way (Eq. 25), group-sparse.
* Server (M-step): the difference gradient to its own, unthresholded ``w``:
  ``mean_s (w - phi_s)``, one optimiser step.  The record's ``sparsity`` is the share of values
  the round's message left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emfl.nn.algorithms.base import ClientResult, check_positive, setting
from emfl.nn.algorithms.fedavg import FedAvg
from emfl.nn.groups import GroupMap
from emfl.nn.messages import GroupSparse
from emfl.nn.models import load_state_vector

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

    def __init__(self, params, run):
        super().__init__(params, run)
        self.layout = GroupMap(run.model)
        self.weights = [f"{layer.name}.weight" for layer in self.layout.layers]

    def threshold(self, w: torch.Tensor) -> tuple:
        """Eq. 25: ``(w with every group of ||w_g|| <= lam zeroed, the mask of the kept groups)``."""
        keep = (self.layout.norms(w) > self.params.lam).float()
        return w * self.layout.expand(keep), keep

    def server_message(self, state: dict) -> tuple:
        return state, GroupSparse(*self.threshold(state["w"]), self.layout)

    def local_loss(self, p: dict, x, y, prior: dict):
        loss = self.data_loss(p, x, y)
        for name in self.weights:  # Eq. 24: lam sum_g ||w_g||
            wt = p[name]
            loss = loss + self.params.lam * wt.reshape(wt.shape[0], -1).norm(dim=1).sum()
        return loss

    def finish(self, msg, job, w_s: torch.Tensor, losses: list) -> ClientResult:
        w_s, keep = self.threshold(w_s)
        load_state_vector(self.run.model, w_s)  # the local model is the one sent
        return ClientResult(GroupSparse(w_s, keep, self.layout), float(np.mean(losses)))

    def m_step(self, state: dict, down, results: list) -> tuple:
        w, sent = state["w"], down.values
        total = torch.zeros_like(w)
        for r in results:
            total += sent - r.up.values
        total = total + len(results) * (w - sent)  # differences to the server's own w
        w, opt = self.difference_step(state, total, len(results))
        sparsity = float((self.layout.sizes * (1 - down.mask)).sum()) / self.run.d
        return {**state, "w": w, "opt": opt}, {"sparsity": sparsity}

    def server_model(self, state: dict) -> torch.Tensor:
        return self.threshold(state["w"])[0]  # the model the server sends (Eq. 25)
