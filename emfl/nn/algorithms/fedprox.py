"""FedProx: hard-EM with an explicit Gaussian prior (the paper, Section 2; notebook 01).

Prior: ``phi_s ~ N(w, I / lam)``; its negative log density is the proximal term.

* Server's message: the model ``w`` (dense).
* Client (E-step, Eq. 7): SGD on the mean batch loss plus ``lam/2 ||phi_s - w||^2``.
* Client's message: its model ``phi_s`` (dense).
* Server (M-step, Eq. 11): as FedAvg, a server-optimiser step on ``mean_s (w - phi_s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from emfl.nn.settings import check_positive, setting
from emfl.nn.algorithms.fedavg import FedAvg
from emfl.nn.state import parameter_views

__all__ = ["FedProx", "Params"]


@dataclass(frozen=True)
class Params:
    lam: float = setting(0.0, "proximal strength lam of lam/2 ||w_s - w||^2 (the prior's precision)")

    def __post_init__(self):
        check_positive("lam", self.lam, "fedprox needs --lam > 0 (the strength of its proximal term)")


class FedProx(FedAvg):
    name = "fedprox"
    title = "FedProx"
    Params = Params
    EXAMPLE = {"lam": 0.5}

    def local_terms(self, msg, job, sub=None) -> dict:
        return {"w": parameter_views(self.setup.model, msg.values)}  # the prior's mean: the server's w

    def local_loss(self, p: dict, x, y, terms: dict):
        loss = self.data_loss(p, x, y)
        return loss + 0.5 * self.params.lam * sum(((p[n] - terms["w"][n]) ** 2).sum() for n in p)
