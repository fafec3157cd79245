"""FedPA: federated posterior averaging (Al-Shedivat et al. 2021; notebook 03, :mod:`emfl.fedpa`).

Prior: a Gaussian around ``w``, with the client's posterior approximated as a Gaussian too.

* Server's message: the model ``w`` (dense).
* Client (E-step): SGD on the mean batch loss; after one burn-in epoch every further epoch gives
  one IASG sample (the average of its iterates); from ``l`` samples, the shrinkage covariance
  ``Sigma_s = rho_l I + (1 - rho_l) S`` and the delta ``Sigma_s^{-1} (w - mu_s)`` in O(l^2 d)
  (:func:`emfl.fedpa.delta_dp`).  In the first ``fedpa_burnin_rounds`` rounds the delta is
  FedAvg's ``w - phi_s``.
* Client's message: its delta (dense) and its number of training examples ``n_s``.
* Server (M-step): one server-optimiser step on the mean delta, weighted by the clients' example
  counts ``n_s / sum n`` (as the reference implementations do) or uniform
  (``--fedpa-weighting uniform``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from emfl import fedpa as fedpa_lib
from emfl.nn.algorithms.base import ClientResult, local_sgd
from emfl.nn.settings import check_choice, check_nonnegative, check_whole, setting
from emfl.nn.algorithms.fedavg import FedAvg
from emfl.nn.messages import Bundle, Count, Dense
from emfl.nn.state import load_state_vector, state_vector

__all__ = ["FedPA", "Params"]


@dataclass(frozen=True)
class Params:
    rho: float = setting(0.01, "shrinkage rho of the covariance estimate")
    fedpa_burnin_rounds: int = setting(0, "rounds run as FedAvg first")
    fedpa_weighting: str = setting("examples", "the server's mean of the deltas: weighted by the clients' "
                                               "example counts (examples) or uniform", choices=("examples", "uniform"))

    def __post_init__(self):
        check_nonnegative("rho", self.rho)
        check_whole("fedpa_burnin_rounds", self.fedpa_burnin_rounds)
        check_choice("fedpa_weighting", self.fedpa_weighting, ("examples", "uniform"))


class FedPA(FedAvg):
    name = "fedpa"
    title = "FedPA"
    Params = Params
    EXAMPLE = {"local_epochs": 2}
    pure_client = False  # the samples are averages of the iterates

    @classmethod
    def check(cls, config) -> None:
        if config.local_epochs < 2:
            raise ValueError("fedpa needs --local-epochs >= 2: one burn-in epoch, then one sample per epoch")

    def client_update(self, msg, job, rt) -> ClientResult:
        model, w = rt.model, msg.values
        load_state_vector(model, w)
        model.train()
        sampling = job.rnd >= self.params.fedpa_burnin_rounds
        sums = {}  # epoch -> [sum of the iterates, count]

        def iasg(epoch):  # IASG: average the iterates of every epoch after the first
            if sampling and epoch >= 1:
                v = state_vector(model)
                if epoch in sums:
                    sums[epoch][0].add_(v)
                    sums[epoch][1] += 1
                else:
                    sums[epoch] = [v.clone(), 1]

        losses = local_sgd(rt, job, lambda x, y: F.cross_entropy(model(x), y), on_step=iasg)
        if sampling:
            samples = torch.stack([total / n for total, n in sums.values()])
            delta = fedpa_lib.delta_dp(samples, w, self.params.rho)
        else:
            delta = w - state_vector(model)
        n_s = rt.num_examples(job.s)
        return ClientResult(Bundle(delta=Dense(delta), n=Count(n_s)), float(np.mean(losses)), local=state_vector(model))

    def m_step(self, state: dict, down, results: list) -> tuple:
        counts = [r.up["n"].value for r in results]
        if self.params.fedpa_weighting == "uniform":
            counts = [1] * len(results)
        total = torch.zeros_like(state["w"])
        for r, n_s in zip(results, counts):
            total += (n_s / sum(counts)) * r.up["delta"].values  # sum_s q_s Sigma_s^{-1} (w - mu_s)
        w, opt = self.difference_step(state, total, 1)
        return {**state, "w": w, "opt": opt}, {}
