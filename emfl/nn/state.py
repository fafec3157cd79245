"""A model's state as one flat vector, the paper's ``w``: the parameters, then the floating-point
buffers (BatchNorm statistics), in the order of ``model.parameters()`` and ``model.buffers()``.
Every message, server state and checkpoint holds weights in this layout."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["state_tensors", "state_vector", "load_state_vector", "parameter_views"]


def state_tensors(model: nn.Module) -> list:
    """Everything the server sends: parameters, then floating-point buffers (BatchNorm statistics)."""
    return list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]


def state_vector(model: nn.Module) -> torch.Tensor:
    """The model's state as one flat vector (the ``w`` of the paper), laid out by :func:`state_tensors`."""
    return torch.cat([t.detach().reshape(-1) for t in state_tensors(model)])


@torch.no_grad()
def load_state_vector(model: nn.Module, vec: torch.Tensor) -> None:
    """Copy a flat state vector into the model's parameters and float buffers."""
    i = 0
    for t in state_tensors(model):
        n = t.numel()
        t.copy_(vec[i:i + n].view_as(t))
        i += n
    if i != vec.numel():
        raise ValueError(f"state vector has {vec.numel()} values, the model {i}")


def parameter_views(model: nn.Module, vec: torch.Tensor) -> dict:
    """``{name: tensor}`` views of a flat state vector shaped like the model's parameters (the
    parameters lead the vector), for losses written on a dictionary of parameters."""
    views, i = {}, 0
    for name, p in model.named_parameters():
        views[name] = vec[i:i + p.numel()].view_as(p)
        i += p.numel()
    return views
