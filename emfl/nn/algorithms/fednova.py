"""FedNova: FedAvg with each client's update normalised by its number of local steps (Wang et al.
2020, "Tackling the objective inconsistency problem in heterogeneous federated optimization").

In the EM reading, FedAvg's implicit prior has precision about ``1 / (K lr)`` (notebook 01): a client
that takes more local steps ``K`` trusts its own data more and pulls the average its way, so the
M-step optimises a mixture of the clients' objectives weighted by their step counts instead of by
their data.  FedNova divides that out.

* Server's message: the model ``w`` (dense, ``4 d`` bytes).
* Client (E-step): plain SGD from ``w`` (as FedAvg), ``tau_s`` local steps; the message is the
  normalised update ``d_s = (w - phi_s) / tau_s`` with ``n_s`` and ``tau_s`` (``4 d + 8`` bytes).
* Server (M-step): ``p_s = n_s / sum n``, ``tau_eff = sum_s p_s tau_s``, and the difference
  gradient ``tau_eff sum_s p_s d_s`` fed to the server optimiser (plain SGD at lr 1 gives FedNova's
  ``w - tau_eff sum_s p_s d_s``).  With equal ``tau_s`` it is FedAvg weighted by ``n_s``.
"""

from __future__ import annotations

import numpy as np
import torch

from emfl.nn.algorithms.base import ClientResult, LocalSGD
from emfl.nn.messages import Bundle, Count, Dense

__all__ = ["FedNova"]


class FedNova(LocalSGD):
    name = "fednova"
    title = "FedNova"

    def finish(self, msg: Dense, job, w_s: torch.Tensor, losses: list, rt) -> ClientResult:
        tau = len(losses)  # local steps taken: one loss per step
        up = Bundle(d=Dense((msg.values - w_s) / tau), n=Count(rt.num_examples(job.s)), tau=Count(tau))
        return ClientResult(up, float(np.mean(losses)), local=w_s)

    def m_step(self, state: dict, down, results: list) -> tuple:
        n = torch.tensor([r.up["n"].value for r in results], dtype=torch.float64)
        p = n / n.sum()  # p_s = n_s / sum n
        tau = torch.tensor([r.up["tau"].value for r in results], dtype=torch.float64)
        tau_eff = float((p * tau).sum())
        total = torch.zeros_like(state["w"])
        for r, p_s in zip(results, p.tolist()):
            total += p_s * r.up["d"].values  # sum_s p_s d_s
        w, opt = self.difference_step(state, tau_eff * total, 1)
        return {**state, "w": w, "opt": opt}, {"tau_eff": tau_eff}
