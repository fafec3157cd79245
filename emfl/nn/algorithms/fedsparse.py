"""FedSparse: hard-EM with a spike-and-slab prior on groups (the paper, Section 3; Algorithms 1
and 2; notebook 04).

Prior: every group ``g`` (a conv filter, an fc neuron) of a client's model is switched on by a
gate ``z_sg ~ Bern(theta_g)`` (spike at 0, slab around ``w``), with
``theta_g = sigmoid((||w_g|| - tau_g) / T)``, ``tau = softplus(v)`` (Appendix H; :mod:`emfl.nn.gates`).

* Server's message (Algorithm 1, lines 3-5): prune the units with ``theta_g <= eps`` and send
  "only the subset of the model that has survived": the values still alive (a pruned unit takes
  its own group and every weight that reads it, :meth:`emfl.nn.groups.GroupMap.alive`), a mask
  bit per unit and the surviving units' thresholds ``v``.
* Client (E-step, Algorithm 2): from ``w_s, v_s = w, v``, SGD on the weights and Adamax on the
  thresholds of the local objective Eq. 41 with ``lam = 0``: the data loss under hard-concrete
  gates with ``P(z > 0) = pi_s``, plus ``lam0 sum_g |g| pi_sg`` (the L0 cost of every value of a
  group) minus ``1e-4`` times the gates' cross-entropy to ``theta`` (Eq. 38).
* Client's message: an exact binary sample ``z_s ~ Bern(pi_s)`` and the values of ``w_s`` still
  alive in the local model it switched on (group-sparse, one mask bit per unit).
* Server (M-step, Algorithm 1): ``grad_w = sum_s a_s (w - w_s)``, with ``a_s`` the client's
  structural mask: ``z_s`` on the units' own groups, and 0 on the weights that read a unit the
  client switched off (they do not enter its likelihood, so their posterior mode is the prior's
  centre ``w``: a zero difference).  ``grad_v`` from the gates
  (:func:`emfl.nn.gates.server_v_gradient`), Adam on ``w`` and Adamax on ``v``, then prune again so
  that the server model is always the pruned one.

The record's ``sparsity`` is the structural share of the server model's values pruned (own
groups and their readers); ``sparsity_own`` counts the pruned units' own groups only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from emfl.nn import gates
from emfl.nn.algorithms.base import Algorithm, ClientResult, local_sgd
from emfl.nn.settings import check_choice, check_nonnegative, setting
from emfl.nn.groups import GateHooks, GroupMap, group_norms
from emfl.nn.messages import Bundle, GroupSparse, PerGroup
from emfl.nn.state import load_state_vector, state_vector
from emfl.nn.slicing import Subnets
from emfl.optim import adam, adamax, sgd

__all__ = ["FedSparse", "Params", "regulariser", "regulariser_slope", "T", "THETA0", "PRUNE", "CLIENT_V_LR", "SERVER_V_LR", "CE_SCALE"]

# The paper's constants (Appendix A): the sigmoid temperature, the initial gate probability (a
# dense model), the server's pruning threshold eps, the thresholds' learning rates (client
# Adamax, server Adamax) and the scale of the gates' cross-entropy.
T, THETA0, PRUNE = 1e-3, 0.99, 0.1
CLIENT_V_LR, SERVER_V_LR, CE_SCALE = 1e-3, 1e-2, 1e-4
V_OPTIMIZERS = {"adamax": adamax, "adam": adam, "sgd": sgd}
LAM0_MAX = 1.0  # past it lam0 |g| prunes everything, and far past it overflows float32 (1e38 |g| = inf)


@dataclass(frozen=True)
class Params:
    lam0: float = setting(5e-6, "L0 strength (5e-7 low, 5e-6 mid, 5e-5 high)")
    sparse_reg: str = setting("example", "the scale of lam0 and the gate cross-entropy: divided by the client's "
                                         "size, Eq. 41 per example (example), or added to the mean batch loss "
                                         "unscaled (batch); example matched Tables 1 and 3 better (notebook 05)",
                              choices=("batch", "example"))
    # readings of what the paper leaves open (notebook 05, "A lesson in reproduction"); the
    # defaults are Algorithm 1 and Appendix A read literally
    theta0: float = setting(THETA0, "the gates' probability at round 0 (Appendix A: 0.99, a dense start)")
    ce_scale: float = setting(CE_SCALE, "the scale of the gates' cross-entropy to theta in the local loss "
                                        "(Appendix A: 1e-4)")
    v_opt: str = setting("adamax", "the thresholds' optimiser, on the clients (lr 1e-3) and on the server "
                                   "(lr 1e-2): Appendix A's adamax, or adam, sgd", choices=("adamax", "adam", "sgd"))
    v_grad: str = setting("z", "what the server's threshold gradient averages: the clients' binary samples z_s "
                               "(z: Algorithm 1) or their probabilities pi_s (pi: Eq. 20 and 22's expectation; "
                               "one more value up per surviving unit)", choices=("z", "pi"))
    theta_space: str = setting("prob", "theta, 1 - theta and logit(theta) from float32 probabilities (prob: "
                                       "1 - theta is exactly 0 past a margin of 16.6 T) or from the logit "
                                       "(logit: no saturation)", choices=("prob", "logit"))
    ungated: str = setting("", "layers left without gates, comma-separated (e.g. conv1): never pruned")

    def __post_init__(self):
        check_nonnegative("lam0", self.lam0)
        check_nonnegative("ce_scale", self.ce_scale)
        if not (isinstance(self.theta0, (int, float)) and 0.5 < self.theta0 < 1):
            raise ValueError(f"theta0 must be in (0.5, 1), a model that starts dense; got {self.theta0!r}")
        check_choice("v_opt", self.v_opt, tuple(V_OPTIMIZERS))
        check_choice("v_grad", self.v_grad, ("z", "pi"))
        check_choice("theta_space", self.theta_space, ("prob", "logit"))
        if not isinstance(self.ungated, str):
            raise ValueError(f"ungated must be layer names separated by commas, e.g. 'conv1'; got {self.ungated!r}")
        if self.lam0 > LAM0_MAX:
            raise ValueError(f"lam0 must be at most {LAM0_MAX:g}; got {self.lam0!r}: it is an L0 cost per weight (per "
                             "example with sparse_reg example), and one of 1 already outweighs any data loss and prunes "
                             "every unit (the paper's levels are 5e-7, 5e-6 and 5e-5)")
        check_choice("sparse_reg", self.sparse_reg, ("batch", "example"))


def regulariser(pi, theta, sizes, lam0: float, n_s: int = 1, ce_scale: float = CE_SCALE):
    """The prior's part of the local loss (Eq. 41 with lam = 0): ``lam0 sum_g |g| pi_g`` (every
    value of a group pays the L0 cost) plus ``ce_scale`` (1e-4) times the gates' cross-entropy
    ``H(pi, theta)``, which is minus Eq. 38 (``gates.gate_cross_entropy`` returns Eq. 38,
    ``E_pi[log p(z | theta)] = -H``), divided by ``n_s`` (the client's size for ``sparse_reg =
    "example"``, 1 for ``"batch"``)."""
    return (lam0 * (sizes * pi).sum() - ce_scale * gates.gate_cross_entropy(pi, theta)) / n_s


def regulariser_slope(theta, sizes, lam0: float, n_s: int = 1, eps: float = 1e-7, ce_scale: float = CE_SCALE,
                      logit=None):
    """``c`` with ``regulariser(pi) = c . pi + const``: Eq. 41's prior part is linear in ``pi``
    (``theta`` is fixed during a client's update), ``c_g = (lam0 |g| - 1e-4 logit(theta_g)) / n_s``.
    The client's loss adds ``c . pi``: the same gradients for one dot product a step.  ``logit``:
    theta's logit itself (no clamp of theta to [eps, 1 - eps], ``theta_space = "logit"``)."""
    if logit is None:
        theta = theta.clamp(eps, 1 - eps)
        logit = torch.log(theta) - torch.log1p(-theta)
    return (lam0 * sizes - ce_scale * logit) / n_s


class FedSparse(Algorithm):
    name = "fedsparse"
    title = "FedSparse"
    Params = Params
    PRESETS = {"low": {"lam0": 5e-7}, "mid": {"lam0": 5e-6}, "high": {"lam0": 5e-5}}  # the paper's levels

    @classmethod
    def display_name(cls, config: dict) -> str:
        """FedSparse low / mid / high by lam0 (else the lam0 itself); a run with the lam0 scale
        that is not the default (``--sparse-reg``) gets it appended: "FedSparse high, batch"."""
        level = {float(p["lam0"]): k for k, p in cls.PRESETS.items()}.get(float(config.get("lam0", 0)))
        name = f"FedSparse {level}" if level else f"FedSparse (lam0 = {config['lam0']:g})"
        reading = config.get("sparse_reg", "batch")
        return name if reading == Params.sparse_reg else f"{name}, {reading}"

    def __init__(self, params, setup):
        super().__init__(params, setup)
        ungated = tuple(n.strip() for n in params.ungated.split(",") if n.strip())
        self.group_map = GroupMap(setup.model, ungated=ungated)
        self.hooks = GateHooks(self.group_map)  # on the model clients train
        self.subnets = Subnets(setup.model, self.group_map)  # clients train only the surviving units
        self.v_opt = V_OPTIMIZERS[params.v_opt](SERVER_V_LR)

    def receiver(self, job, sent=None) -> dict:
        return {"group_map": self.group_map}  # places the group-sparse values

    def init(self, w: torch.Tensor) -> dict:
        v = gates.init_threshold(self.group_map.norms(w), self.params.theta0, T)  # theta = 0.99: a dense start
        return {"w": w, "v": v, "opt": self.server_opt.init(w), "v_opt": self.v_opt.init(v)}

    def theta(self, w: torch.Tensor, v: torch.Tensor, unsent_sq=None) -> torch.Tensor:
        """``theta = sigmoid((||w_g|| - softplus(v_g)) / T)``: the prior's gate probabilities
        (``unsent_sq``: the squares a message left out of each row, see :meth:`GroupMap.unsent_sq`)."""
        return gates.gate_prob(self.group_map.norms(w, unsent_sq), v, T)

    def logit(self, w: torch.Tensor, v: torch.Tensor, unsent_sq=None) -> torch.Tensor:
        """``(||w_g|| - softplus(v_g)) / T``: theta's logit (:func:`emfl.nn.gates.gate_logit`)."""
        return gates.gate_logit(self.group_map.norms(w, unsent_sq), v, T)

    def prune(self, w: torch.Tensor, v: torch.Tensor) -> tuple:
        """``(I[theta > eps] w, I[theta > eps])``: the model with its pruned units' groups zeroed.
        The weights that read a pruned unit are dead (they multiply a zero); the server keeps them,
        since they are part of the norms ``||w_g||`` of the units that own them, but never sends them."""
        keep = (self.theta(w, v) > PRUNE).float()
        return w * self.group_map.expand(keep), keep

    # ------------------------------------------------------------------ Algorithm 1, before the clients
    def server_message(self, state: dict) -> tuple:
        w, keep = self.prune(state["w"], state["v"])  # w <- I[theta > eps] w
        state = {**state, "w": w}
        # the surviving values with a mask bit per unit; per surviving unit its threshold and the
        # sum of squares of its dead inputs, so that the client's norms ||w_g|| are the server's
        return state, Bundle(w=GroupSparse(w, keep, self.group_map), v=PerGroup(state["v"], keep),
                             unsent=PerGroup(self.group_map.unsent_sq(w, keep), keep))

    # ------------------------------------------------------------------ Algorithm 2
    def client_update(self, msg: Bundle, job, rt) -> ClientResult:
        model, group_map, lam0 = rt.model, self.group_map, self.params.lam0
        w, v, unsent = msg["w"].values, msg["v"].values, msg["unsent"].values  # get w, v from the server
        logit = self.logit(w, v, unsent)
        theta = torch.sigmoid(logit)  # theta <- sigmoid((|w| - tau) / T)
        # the network the client computes: the units the server pruned left out (their values are
        # 0 and stay 0, emfl.nn.slicing); thresholds, gates and the prior stay per unit of the model
        sub = self.subnet(msg["w"].mask)
        net, hooks, layers = (model, self.hooks, group_map.layers) if sub is None else (sub.model, sub.hooks, sub.group_map.layers)
        load_state_vector(net, w if sub is None else sub.values(w))  # w_s, v_s <- w, v
        net.train()
        v_s = v.clone().requires_grad_(True)
        opt_v = V_OPTIMIZERS[self.params.v_opt](CLIENT_V_LR)
        v_state = [opt_v.init(v)]
        n_s = rt.num_examples(job.s) if self.params.sparse_reg == "example" else 1
        slope = regulariser_slope(theta, group_map.sizes.to(rt.device, theta.dtype), lam0, n_s, ce_scale=self.params.ce_scale,
                                  logit=logit if self.params.theta_space == "logit" else None)

        def objective(x, y):  # for epoch e in 1..E, for batch b in B
            # tau_s <- softplus(v_s); pi_s <- sigmoid((|w_s| - tau_s) / T)
            with torch.no_grad():  # the norms are detached inside the sigmoid (Appendix H)
                norms = torch.cat([group_norms(l) for l in layers])
                if sub is not None:  # a pruned unit's weights are 0
                    norms = torch.zeros_like(v).index_copy_(0, sub.units, norms)
            pi = gates.gate_prob((norms ** 2 + unsent).sqrt(), v_s, T)
            z = gates.hard_concrete_sample(gates.log_alpha_for(pi), generator=job.gen)
            # the model with its units' outputs scaled by z
            out = hooks.forward(net, x, z if sub is None else z[sub.units])
            loss = F.cross_entropy(out, y)  # L_s <- Eq. 41 on the batch
            reg = (slope * pi).sum()  # regulariser(pi, theta, sizes, lam0, n_s) up to a constant
            return loss + reg, loss

        def threshold_step():  # w_s <- SGD (local_sgd), then v_s <- Adamax
            step, v_state[0] = opt_v.update(v_s.grad, v_state[0])
            v_s.sub_(step)
            v_s.grad = None

        losses = local_sgd(rt, job, objective, model=net, after_step=threshold_step)
        with torch.no_grad():
            w_s = state_vector(model) if sub is None else sub.merge(w)
            pi = gates.gate_prob(group_map.norms(w_s, unsent), v_s, T)  # pi_s <- sigmoid((|w_s| - tau_s) / T)
            up = self.upload(w_s, pi, job.gen)
            local = w_s * group_map.expand(up.mask.to(w_s.dtype))  # the local model: the groups it switched on
            if self.params.v_grad == "pi":  # and pi_s of the surviving units, for Eq. 22's expectation
                up = Bundle(w=up, pi=PerGroup(pi, msg["w"].mask))
        return ClientResult(up, float(np.mean(losses)), local=local, stats=(pi - theta).abs())

    def upload(self, w_s: torch.Tensor, pi: torch.Tensor, gen: torch.Generator) -> GroupSparse:
        """Algorithm 2's return: an exact sample ``z_s ~ Bern(pi_s)`` (the zero-temperature gate) and
        the values of ``w_s`` alive under it."""
        z = torch.bernoulli(pi.detach().cpu(), generator=gen).to(w_s.device)  # z_s ~ q_pi(z_s)
        return GroupSparse(w_s, z, self.group_map)  # return z_s, z_s * w_s

    # ------------------------------------------------------------------ Algorithm 1, after the clients
    def m_step(self, state: dict, down, results: list) -> tuple:
        w, v = state["w"], state["v"]
        logit = self.logit(w, v)
        theta = torch.sigmoid(logit)
        off = torch.sigmoid(-logit) if self.params.theta_space == "logit" else None  # 1 - theta, unsaturated
        grad_w, grad_v = torch.zeros_like(w), torch.zeros_like(v)
        for r in results:
            up = r.up["w"] if self.params.v_grad == "pi" else r.up
            grad_w += up.alive * (w - up.values)  # z_s (w - w_s), structurally: descent sign
            gate = r.up["pi"].values if self.params.v_grad == "pi" else up.mask  # pi_s (Eq. 22) or z_s
            grad_v += gates.server_v_gradient(gate, theta, v, T, one_minus_theta=off)
        n = len(results)
        step, opt = self.server_opt.update(grad_w / n, state["opt"])  # ADAM
        v_step, v_opt = self.v_opt.update(grad_v / n, state["v_opt"])  # ADAMAX
        w, v = w - step, v - v_step
        w, keep = self.prune(w, v)  # the server model is always the pruned one
        tv = torch.stack([r.stats for r in results])
        return ({"w": w, "v": v, "opt": opt, "v_opt": v_opt},
                {**self.group_map.sparsity(keep), "tv_mean": float(tv.mean()), "tv_max": float(tv.max())})
