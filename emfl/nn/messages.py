"""What the server and the clients send each other, and its exact size in bytes.

Every message an algorithm sends is one of these; the round loop adds up ``message.nbytes``, so
no algorithm counts bytes itself.  A value is a float32 (4 bytes); a mask costs one bit per group,
rounded up to whole bytes.  The payload is kept as a full-length vector (zeros where nothing is
sent) so that the receiver can compute with it directly; the size counts only what an encoder
would put on the wire.

* :class:`Dense`: every value of a vector: ``4 d`` bytes;
* :class:`GroupSparse`: the values of the groups whose mask is 1, the values outside any group,
  and the mask: ``4 (dense + sum_g m_g |g|) + ceil(G / 8)``;
* :class:`SubModel`: a structurally smaller model (kept units, without the inputs of the dropped
  units of the layer before): 4 bytes per parameter of the sub-model;
* :class:`Thresholds`: one value per group present: ``4 sum_g m_g``;
* :class:`Bundle`: named parts sent together (a model and a control variate): the sum of the parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from emfl.nn.groups import GroupMap

__all__ = ["FLOAT_BYTES", "Message", "Dense", "GroupSparse", "SubModel", "Thresholds", "Bundle", "mask_bytes"]

FLOAT_BYTES = 4  # a float32 value


def mask_bytes(groups: int) -> int:
    """One bit per group, rounded up to whole bytes."""
    return math.ceil(groups / 8)


class Message:
    """Something sent over the network; ``nbytes`` is its exact size."""

    @property
    def nbytes(self) -> int:  # pragma: no cover - every message defines it
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Dense(Message):
    """Every value of ``values`` (a model, a delta, a control variate)."""

    values: torch.Tensor

    @cached_property
    def nbytes(self) -> int:
        return FLOAT_BYTES * self.values.numel()


@dataclass(frozen=True, eq=False)
class GroupSparse(Message):
    """Structured-sparse values: only the groups of ``layout`` whose ``mask`` is 1 (and every value
    outside the groups); ``values`` is zero elsewhere.  ``mask_bits``: whether the mask itself is
    sent, one bit per group (FedSparse's download leaves it out: it sends one threshold per
    surviving group instead, see :class:`Thresholds`)."""

    values: torch.Tensor
    mask: torch.Tensor
    layout: GroupMap
    mask_bits: bool = True

    @cached_property
    def nbytes(self) -> int:
        bits = mask_bytes(self.layout.num_groups) if self.mask_bits else 0
        return FLOAT_BYTES * self.layout.values_on(self.mask) + bits


@dataclass(frozen=True, eq=False)
class SubModel(Message):
    """A structurally smaller model: the units with ``units == 1`` of every layer of ``layout``
    (a chain of layers), each with its weights from the kept units of the layer before and its
    bias; dropped rows and columns are removed, not zeroed.  ``values`` is the full state vector
    (what lies outside the sub-model is not sent)."""

    values: torch.Tensor
    units: torch.Tensor
    layout: GroupMap

    @cached_property
    def nbytes(self) -> int:
        return FLOAT_BYTES * self.layout.submodel_values(self.units)


@dataclass(frozen=True, eq=False)
class Thresholds(Message):
    """One value per group (a gate threshold), sent for the groups with ``mask == 1`` only
    (all of them when ``mask`` is None)."""

    values: torch.Tensor
    mask: torch.Tensor | None = None

    @cached_property
    def nbytes(self) -> int:
        sent = self.values.numel() if self.mask is None else int(self.mask.sum())
        return FLOAT_BYTES * sent


class Bundle(Message):
    """Named parts sent together: ``Bundle(w=Dense(w), c=Dense(c))``; ``bundle["w"]`` is a part."""

    def __init__(self, **parts: Message):
        if not parts or not all(isinstance(p, Message) for p in parts.values()):
            raise ValueError("a Bundle needs one or more named messages, e.g. Bundle(w=Dense(w))")
        self.parts = parts

    def __getitem__(self, name: str) -> Message:
        return self.parts[name]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts.values())

    def __repr__(self) -> str:
        return f"Bundle({', '.join(f'{k}={type(v).__name__}' for k, v in self.parts.items())})"
