"""Structured groups of a model: one group per conv output filter and per fc output neuron.

FedSparse (and the FedL1 and FedDrop baselines) switch whole groups on and off: a group is the
weights that produce one output channel of a convolution, or one output of a linear layer, with
its bias.  The output layer is left dense by default (pruning it would remove classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Layer", "prunable_layers", "group_norms", "group_sizes", "apply_group_masks", "dense_values"]


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
