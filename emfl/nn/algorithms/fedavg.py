"""FedAvg: hard-EM with a Gaussian prior (the paper, Section 2; notebook 01).

Prior: ``phi_s ~ N(w, I / lam)`` around the server's ``w``.

* Server's message: the model ``w`` (dense, ``4 d`` bytes).
* Client (E-step, Eq. 7): the MAP ``phi_s`` of its data under the prior, approximated by SGD on
  the mean batch loss from ``phi_s = w``; the prior is implicit: ``K`` steps of size ``lr`` act as
  a Gaussian prior of precision about ``1 / (K lr)`` (notebook 01), so the local objective has no
  penalty term.
* Client's message: its model ``phi_s`` (dense, ``4 d`` bytes).
* Server (M-step, Eq. 11): ``w = mean_s phi_s``, taken as one step of the server optimiser on the
  difference gradient ``mean_s (w - phi_s)`` (Appendix A: Adam; plain SGD with lr 1 is Eq. 11).
"""

from __future__ import annotations

import torch

from emfl.nn.algorithms.base import LocalSGD

__all__ = ["FedAvg"]


class FedAvg(LocalSGD):
    name = "fedavg"
    title = "FedAvg"

    def m_step(self, state: dict, down, results: list) -> tuple:
        w = state["w"]
        total = torch.zeros_like(w)
        for r in results:
            total += w - r.up.values  # sum_s (w - phi_s)
        w, opt = self.difference_step(state, total, len(results))
        return {**state, "w": w, "opt": opt}, {}
