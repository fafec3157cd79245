"""SCAFFOLD with option II control variates (Karimireddy et al. 2020; the paper's Appendix E).

Not a new prior: the server's model ``x`` is FedAvg's, and the clients' drift is corrected by
control variates, the server's ``c`` and each client's ``c_i`` (kept by the client between the
rounds it takes part in, zero at first).  The correction enters the local objective where the
other algorithms put their prior's penalty.

* Server's message: ``x`` and ``c`` (dense, ``2 x 4 d`` bytes).
* Client: ``y = x``, then ``K`` SGD steps ``y <- y - lr (g_i(y) - c_i + c)``: SGD on the mean batch
  loss plus the linear term ``<c - c_i, y>``; then ``c_i+ = c_i - c + (x - y) / (K lr)``.
* Client's message: ``(y - x, c_i+ - c_i)`` (dense, ``2 x 4 d`` bytes): twice FedAvg's traffic,
  as Appendix E notes.
* Server: ``x <- x + eta_g mean_i (y_i - x)`` as one server-optimiser step on the difference
  gradient ``mean_i (x - y_i)`` (plain SGD with lr ``eta_g`` is the formula), and
  ``c <- c + (|S| / N) mean_i (c_i+ - c_i)`` with ``N`` clients in all.

The control variates have the layout of the state vector; only their parameter part enters the
loss (on models with BatchNorm, the statistics' part just records their drift).  The training loss
recorded is the local objective, correction included.  Every client that has taken part keeps its
``c_i`` (``4 d`` bytes each) in the run's memory and its checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from emfl.nn.algorithms.base import ClientResult, LocalSGD
from emfl.nn.messages import Bundle, Dense
from emfl.nn.state import parameter_views

__all__ = ["Scaffold"]


class Scaffold(LocalSGD):
    name = "scaffold"
    title = "SCAFFOLD"

    def init(self, w: torch.Tensor) -> dict:
        return {"w": w, "c": torch.zeros_like(w), "opt": self.server_opt.init(w)}

    def server_message(self, state: dict) -> tuple:
        return state, Bundle(w=Dense(state["w"]), c=Dense(state["c"]))

    def start(self, msg: Bundle) -> torch.Tensor:
        return msg["w"].values  # y <- x

    @staticmethod
    def client_variate(msg: Bundle, job) -> torch.Tensor:
        """The client's ``c_i``: what it kept from its last round, zero the first time."""
        return job.memory if job.memory is not None else torch.zeros_like(msg["c"].values)

    def local_terms(self, msg: Bundle, job, sub=None) -> dict:
        return {"correction": parameter_views(self.setup.model, msg["c"].values - self.client_variate(msg, job))}

    def local_loss(self, p: dict, x, y, terms: dict):
        loss = self.data_loss(p, x, y)  # its gradient is g_i(y); the linear term adds c - c_i
        return loss + sum((terms["correction"][n] * p[n]).sum() for n in p)

    def finish(self, msg: Bundle, job, y: torch.Tensor, losses: list, rt) -> ClientResult:
        x, c, c_i = msg["w"].values, msg["c"].values, self.client_variate(msg, job)
        K, lr = len(losses), rt.lr  # K: the local steps taken (one loss per step)
        c_new = c_i - c + (x - y) / (K * lr)  # option II
        up = Bundle(dy=Dense(y - x), dc=Dense(c_new - c_i))
        return ClientResult(up, float(np.mean(losses)), local=y, memory=c_new)

    def m_step(self, state: dict, down, results: list) -> tuple:
        x, c = state["w"], state["c"]
        total, dc = torch.zeros_like(x), torch.zeros_like(c)
        for r in results:
            total -= r.up["dy"].values  # sum_i (x - y_i)
            dc += r.up["dc"].values
        n, N = len(results), self.setup.num_clients
        x, opt = self.difference_step(state, total, n)
        return {**state, "w": x, "c": c + (n / N) * (dc / n), "opt": opt}, {}
