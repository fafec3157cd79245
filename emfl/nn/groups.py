"""Structured groups of a model: one group per conv output filter and per fc output neuron.

FedSparse (and the FedL1 and FedDrop baselines) switch whole groups on and off: a group is the
weights that produce one output channel of a convolution, or one output of a linear layer, with
its bias.  The output layer is left dense by default (pruning it would remove classes).

:class:`GroupMap` places the groups in the flat state vector (:func:`emfl.nn.models.state_vector`):
group norms, masks spread over the vector, and the values a mask keeps.  :class:`GateHooks`
multiplies each gated layer's outputs by its gates.  Everything outside the groups is dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emfl.nn.models import state_tensors

__all__ = ["Layer", "prunable_layers", "group_norms", "group_sizes", "apply_group_masks", "dense_values",
           "GroupMap", "GateHooks"]


@dataclass(frozen=True)
class Layer:
    name: str
    module: nn.Module

    @property
    def groups(self) -> int:
        return self.module.weight.shape[0]

    @property
    def values_per_group(self) -> int:
        """Parameters in one group: a row of the weight (all input channels x kernel) plus a bias."""
        w = self.module.weight
        return w[0].numel() + (1 if self.module.bias is not None else 0)


def prunable_layers(model: nn.Module, prune_output: bool = False) -> list:
    """The conv and linear layers whose outputs are gated, in forward order of definition."""
    layers = [Layer(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer to gate")
    if not prune_output and isinstance(layers[-1].module, nn.Linear):
        layers = layers[:-1]
    return layers


def group_norms(layer: Layer) -> torch.Tensor:
    """``||w_g||_2`` of each group's weights (bias excluded), shape (groups,)."""
    w = layer.module.weight
    return w.reshape(w.shape[0], -1).norm(dim=1)


def group_sizes(layers: list) -> torch.Tensor:
    """Values per group for every group of ``layers``, concatenated in layer order."""
    return torch.cat([torch.full((l.groups,), l.values_per_group, dtype=torch.int64) for l in layers])


@torch.no_grad()
def apply_group_masks(layers: list, masks: list) -> None:
    """Zero the weights and bias of every group whose mask entry is 0 (in place)."""
    if len(masks) != len(layers):
        raise ValueError(f"need one mask per layer ({len(layers)}); got {len(masks)}")
    for layer, m in zip(layers, masks):
        if m.shape != (layer.groups,):
            raise ValueError(f"mask for {layer.name} must have shape ({layer.groups},); got {tuple(m.shape)}")
        w = layer.module.weight
        w.mul_(m.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        if layer.module.bias is not None:
            layer.module.bias.mul_(m.to(w.dtype))


def dense_values(model: nn.Module, layers: list) -> int:
    """Parameters outside the gated groups (always sent dense)."""
    gated = sum(l.groups * l.values_per_group for l in layers)
    return sum(p.numel() for p in model.parameters()) - gated


class GroupMap:
    """Positions of every gated group in the flat state vector of ``model`` (as
    :func:`emfl.nn.models.state_vector` lays it out: parameters, then float buffers).  Norms use a
    group's weight row only; its bias belongs to the group too."""

    def __init__(self, model: nn.Module, prune_output: bool = False):
        self.layers = prunable_layers(model, prune_output)
        offsets, i = {}, 0
        for t in state_tensors(model):
            offsets[id(t)] = i
            i += t.numel()
        d = i
        self.group_of = torch.full((d,), -1, dtype=torch.int64)
        self.weight_of = torch.full((d,), -1, dtype=torch.int64)
        sizes, first = [], 0
        self.layer_slices = []
        for layer in self.layers:
            m, G = layer.module, layer.groups
            w0 = offsets[id(m.weight)]
            per = m.weight[0].numel()
            idx = torch.arange(first, first + G).repeat_interleave(per)
            self.group_of[w0:w0 + G * per] = idx
            self.weight_of[w0:w0 + G * per] = idx
            if m.bias is not None:
                b0 = offsets[id(m.bias)]
                self.group_of[b0:b0 + G] = torch.arange(first, first + G)
            sizes.append(torch.full((G,), per + (m.bias is not None), dtype=torch.int64))
            self.layer_slices.append((first, first + G))
            first += G
        self.sizes = torch.cat(sizes)
        self.num_groups = first
        self.dense = int((self.group_of < 0).sum())
        self._wsel = self.weight_of >= 0
        self._gsel = self.group_of >= 0

    def norms(self, w: torch.Tensor) -> torch.Tensor:
        """``||w_g||_2`` of every group's weight row, shape (groups,)."""
        sq = torch.zeros(self.num_groups, dtype=w.dtype, device=w.device)
        sq.index_add_(0, self.weight_of[self._wsel].to(w.device), w[self._wsel.to(w.device)] ** 2)
        return sq.sqrt()

    def expand(self, mask: torch.Tensor) -> torch.Tensor:
        """A per-group mask spread over the state vector; dense values get 1."""
        full = torch.ones(self.group_of.shape, dtype=mask.dtype, device=mask.device)
        full[self._gsel.to(mask.device)] = mask[self.group_of[self._gsel].to(mask.device)]
        return full

    def values_on(self, mask: torch.Tensor) -> int:
        """Values sent when only the groups with ``mask == 1`` are sent (plus the dense values)."""
        return self.dense + int((self.sizes.to(mask.device) * (mask > 0)).sum())

    def submodel_values(self, units: torch.Tensor) -> int:
        """Parameters of the sub-model that keeps the units ``units`` (one entry per group, output
        layer included when it is gated): each kept unit's weights from the kept units of the layer
        before, and its bias.  The layers must form a chain (each one reads the previous one)."""
        total, prev = 0, None
        for (a, b), layer in zip(self.layer_slices, self.layers):
            kept = int(units[a:b].sum())
            per_unit = layer.module.weight[0].numel()
            if prev is not None:  # inputs from dropped units of the previous layer are removed too
                per_unit = per_unit * prev[1] // prev[0]
            total += kept * per_unit + (kept if layer.module.bias is not None else 0)
            prev = (layer.groups, kept)
        return total


class GateHooks:
    """Multiplies each gated layer's output channels by gates ``z`` (None: no gating)."""

    def __init__(self, group_map: GroupMap):
        self.map = group_map
        self.z = None
        self._handles = [layer.module.register_forward_hook(self._hook(k)) for k, layer in enumerate(group_map.layers)]

    def _hook(self, k):
        def hook(module, inputs, output):
            if self.z is None:
                return output
            a, b = self.map.layer_slices[k]
            z = self.z[a:b]
            return output * (z.view(1, -1, 1, 1) if output.dim() == 4 else z.view(1, -1))

        return hook

    def remove(self):
        for h in self._handles:
            h.remove()
