"""FedSpa: personalised sparse local models (Huang et al. 2022).

In the EM reading each client ``s`` has its own spike-and-slab posterior with a *hard, personal*
gate: a binary mask ``m_s`` over the weights of its conv and linear layers, of a fixed density
``D``.  Its model is ``w_s * m_s``: a weight off in ``m_s`` is exactly 0 (the spike), the others are
trained (the slab).  FedSparse shares one set of gate probabilities ``theta`` through the server;
FedSpa keeps the gates with the client and lets the server average only what each client holds.

* Server's message to client ``s``: the values of ``w`` its mask holds (the server knows the mask:
  the client sent it the last time it changed; the first one is drawn from a seed both know).
* Client (E-step): SGD on the mean batch loss of the masked model (gradients off the mask dropped:
  sparse to sparse).  Then the mask moves: in every layer the fraction
  ``alpha_t = prune_alpha / 2 (1 + cos(pi t / T_end))`` of its active weights with the smallest magnitude is
  switched off and as many inactive ones with the largest dense gradient are switched on.
* Client's message: the trained values at the mask it trained with, and the new mask (a bit per
  maskable weight) when it changed; the server remembers it (``remember``) for the next message.
* Server (M-step): each weight's mean difference over the clients whose mask held it, one step of
  the run's server optimiser on it (Adam at 1e-3 in the paper's protocol, as for every method here;
  with plain SGD at learning rate 1 each weight becomes the average of the clients that hold it);
  a weight no sampled client held gets a zero difference (under Adam its momentum still moves it).

From FedSpa's abstract: personal masks of fixed density, sparse-to-sparse local training, masked
messages both ways, personalised evaluation (local accuracy: each client's model on its own test
set).  From the same group's DisPFL code, not verified for FedSpa (``../shared/NOTES.md`` section
7): ERK layer densities at the start, the cosine-annealed prune fraction with ``prune_alpha = 0.5``,
regrowth by the largest dense gradient.  Assumed here: the dense gradient is that of the last
local step; a weight pruned this round is not regrown in it (so every layer keeps its count
exactly); biases and every value outside conv and linear weights are held by every mask; the
server averages the values the clients trained, not the regrown zeros.

Each client's mask stays with the client between rounds (its memory) and the server keeps a copy
from the replies (what it knows of the client), both packed 8 weights a byte and part of the run's
checkpoint (``d / 8`` bytes each for each client that has taken part); a client never sampled has
its initial mask, drawn again from its seed when needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emfl.nn.algorithms.base import Algorithm, ClientResult, local_sgd

from emfl.nn.settings import check_whole, setting
from emfl.nn.messages import Bits, Bundle, Dense, Masked, pack_bits, unpack_bits
from emfl.nn.models import layer_macs
from emfl.nn.seeding import ClientJob
from emfl.nn.state import load_state_vector, state_tensors, state_vector
from emfl.personal_masks import prune_fraction  # the same schedule as on the toy world

__all__ = ["FedSpa", "Params", "erk_densities", "mask_layers", "mac_share"]


@dataclass(frozen=True)
class Params:
    density: float = setting(0.5, "share D of each client's conv and linear weights its mask holds (ERK per layer)")
    prune_alpha: float = setting(0.5, "fraction prune_alpha of active weights pruned and regrown at round 0, "
                                      "annealed to 0 by a cosine")
    anneal_rounds: int = setting(0, "rounds T_end over which the prune fraction anneals (0: the run's --rounds)")

    def __post_init__(self):
        d = self.density
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (0 < d <= 1):
            raise ValueError(f"density must be in (0, 1] (the share of weights a client keeps); got {d!r}")
        a = self.prune_alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not (0 <= a <= 1):
            raise ValueError(f"prune_alpha must be in [0, 1]; got {a!r}")
        check_whole("anneal_rounds", self.anneal_rounds)


def erk_densities(shapes: list, density: float) -> list:
    """Erdos-Renyi-Kernel densities: layer ``l`` of shape ``(n_out, n_in, k_h, k_w)`` (or
    ``(n_out, n_in)``) gets ``eps (sum of its dims) / (product of its dims)``, with ``eps`` chosen
    so that the layers hold ``density`` of all their weights; a layer that would exceed 1 is
    dense and ``eps`` is solved again for the rest."""
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / n for s, n in zip(shapes, sizes)]
    dense: set = set()
    while True:
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        rest = [i for i in range(len(shapes)) if i not in dense]
        eps = budget / sum(raw[i] * sizes[i] for i in rest) if rest else 0.0
        over = {i for i in rest if eps * raw[i] > 1}
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense |= over


def mask_layers(model: nn.Module, density: float) -> tuple:
    """The weights a mask covers and how many of each it holds: ``(layers, counts)`` with a
    ``(offset in the state vector, size, shape)`` per conv and linear weight and its ERK count."""
    weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    layers, offset = [], 0
    for t in state_tensors(model):
        if id(t) in weights:
            layers.append((offset, t.numel(), tuple(t.shape)))
        offset += t.numel()
    counts = [round(f * n) for f, (_, n, _) in zip(erk_densities([s for *_, s in layers], density), layers)]
    return layers, counts


def mac_share(model: nn.Module, input_shape, density: float) -> float:
    """Multiply-adds of a client's masked forward pass as a share of the dense model's, for masks
    of ``density`` with ERK layer densities: each layer's weights cost in proportion to the
    positions they are applied at, so a layer ERK keeps dense (the first conv layer, applied at
    every pixel) weighs more than its size.  What sparse-to-sparse training could save; the
    engine computes the masked model densely."""
    layers, counts = mask_layers(model, density)
    macs = layer_macs(model, input_shape)
    return sum(k / n * c for k, (_, n, _), c in zip(counts, layers, macs)) / sum(macs)


class FedSpa(Algorithm):
    name = "fedspa"
    title = "FedSpa"
    Params = Params

    @classmethod
    def display_name(cls, config: dict) -> str:
        return f"FedSpa D = {float(config.get('density', 0.5)):g}"

    def __init__(self, params, setup):
        super().__init__(params, setup)
        self.layers, self.counts = mask_layers(setup.model, params.density)
        self.maskable = sum(n for _, n, _ in self.layers)

    # ------------------------------------------------------------------ the masks
    def initial_mask(self, s: int) -> torch.Tensor:
        """Client ``s``'s first mask over the maskable weights (boolean): ``counts[l]`` weights of
        layer ``l`` at random, from a stream seeded by the run's seed and the client alone."""
        gen = ClientJob(self.setup.config.seed, -1, s).generator("fedspa-mask")
        parts = []
        for (_, n, _), k in zip(self.layers, self.counts):
            m = torch.zeros(n, dtype=torch.bool)
            m[torch.randperm(n, generator=gen)[:k]] = True
            parts.append(m)
        return torch.cat(parts)

    def mask_of(self, packed, s: int) -> torch.Tensor:
        """Client ``s``'s current mask over the maskable weights: ``packed`` (its last one, as
        the client kept it or the server remembered it), or its first one when None."""
        if packed is None:
            return self.initial_mask(s)
        return unpack_bits(packed, self.maskable)

    def spread(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask over the maskable weights as a boolean over the state vector (everything else held)."""
        full = torch.ones(self.setup.d, dtype=torch.bool)
        i = 0
        for offset, n, _ in self.layers:
            full[offset:offset + n] = mask[i:i + n]
            i += n
        return full.to(self.setup.device)

    def gather(self, held: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`spread`: a state-vector mask read back over the maskable weights."""
        return torch.cat([held[o:o + n] for o, n, _ in self.layers]).cpu()

    def moved(self, mask: torch.Tensor, w_s: torch.Tensor, grad: torch.Tensor, alpha_t: float) -> torch.Tensor:
        """The mask after pruning and regrowing: per layer, the ``floor(alpha_t |active|)`` active
        weights of smallest ``|w_s|`` off and as many inactive ones of largest ``|grad|`` on
        (never more than there are inactive; a weight pruned now is not regrown now)."""
        new, i = mask.clone(), 0
        for offset, n, _ in self.layers:
            m = mask[i:i + n]
            k = min(int(alpha_t * int(m.sum())), int((~m).sum()))
            if k > 0:
                w = w_s[offset:offset + n].detach().abs().cpu()
                g = grad[offset:offset + n].detach().abs().cpu()
                off = torch.topk(torch.where(m, w, torch.full_like(w, math.inf)), k, largest=False).indices
                on = torch.topk(torch.where(m, torch.full_like(g, -1.0), g), k).indices
                new[i + off] = False
                new[i + on] = True
            i += n
        return new

    # ------------------------------------------------------------------ the protocol
    def message_to(self, down: Dense, job) -> Masked:
        return Masked(down.values, self.spread(self.mask_of(job.known, job.s)))  # the server knows the mask

    def remember(self, known, up: Bundle):
        """The client's new mask, when its reply holds one; else what the server knew."""
        return pack_bits(up["mask"].bits) if "mask" in up.parts else known

    def receiver(self, job, sent=None) -> dict:
        """The mask of the values: the client's own (client side), the one sent (server side)."""
        return {"mask": self.spread(self.mask_of(job.memory, job.s)) if sent is None else sent.mask}

    def client_update(self, msg: Masked, job, rt) -> ClientResult:
        model = rt.model
        held = msg.mask
        mask = self.gather(held)  # the client's mask, as the server spread it
        load_state_vector(model, msg.values)  # w_s <- w * m_s
        model.train()
        params = list(model.parameters())
        keep, i = [], 0  # the mask in the shapes of the parameters (they lead the state vector)
        for p in params:
            keep.append(held[i:i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()
        grads = [None]

        def last_gradient(epoch):
            grads[0] = [p.grad for p in params]

        # only the weights the mask holds move
        losses = local_sgd(rt, job, lambda x, y: F.cross_entropy(model(x), y), keep=keep, on_step=last_gradient)
        w_s = state_vector(model)
        dense_grad = torch.cat([g.reshape(-1) for g in grads[0]]) if grads[0] else torch.zeros_like(w_s)
        T_end = self.params.anneal_rounds or self.setup.config.rounds
        new = self.moved(mask, w_s, dense_grad, prune_fraction(self.params.prune_alpha, job.rnd, T_end))
        # the trained values at the mask trained with; the new mask when it moved
        up = Bundle(w=Masked(w_s, held)) if torch.equal(new, mask) else Bundle(w=Masked(w_s, held), mask=Bits(new))
        return ClientResult(up, float(np.mean(losses)), local=w_s, memory=pack_bits(new))

    def m_step(self, state: dict, down, results: list) -> tuple:
        w = state["w"]
        total, count = torch.zeros_like(w), torch.zeros_like(w)
        for r in results:
            held = r.up["w"].mask.to(w.dtype)
            total += held * (w - r.up["w"].values)
            count += held
        mean = total / count.clamp(min=1)  # per weight, over the clients that hold it
        step, opt = self.server_opt.update(mean, state["opt"])
        density = float(np.mean([float(self.mask_density(r.up["w"].mask)) for r in results]))
        return {**state, "w": w - step, "opt": opt}, {"density": density}

    def mask_density(self, held: torch.Tensor) -> float:
        """The share of the maskable weights a state-vector mask holds."""
        return sum(int(held[o:o + n].sum()) for o, n, _ in self.layers) / self.maskable
