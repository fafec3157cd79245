"""What the server and the clients send each other, and its exact size in bytes.

Every message an algorithm sends is one of these; the round loop adds up ``message.nbytes``, so
no algorithm counts bytes itself.  A value is a float32 (4 bytes; 8 in a run with
``precision="float64"``, which tests use to compare two computations beyond round-off); a mask
costs one bit per group, rounded up to whole bytes.  The payload is kept as a full-length vector (zeros where nothing is
sent) so that the receiver can compute with it directly; the size counts only what an encoder
would put on the wire.

* :class:`Dense`: every value of a vector: ``4 d`` bytes;
* :class:`GroupSparse`: the values still alive when the units whose mask is 0 are off (their own
  groups and every weight that reads them are left out, :meth:`GroupMap.alive`), and the mask:
  ``4 |alive| + ceil(G / 8)``;
* :class:`SubModel`: a structurally smaller model (kept units, without the inputs of the dropped
  units of the layer before): 4 bytes per parameter of the sub-model, the same structural count;
* :class:`Masked`: unstructured-sparse values (FedSpa's personal masks), with the mask when it
  is new to the receiver: ``4 |mask| + ceil(bits / 8)``;
* :class:`PerGroup` (alias ``Thresholds``): one value per group present: ``4 sum_g m_g``;
* :class:`Count`: a whole number (a client's example count): 4 bytes;
* :class:`Bundle`: named parts sent together (a model and a control variate): the sum of the parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from emfl.nn.groups import GroupMap

__all__ = ["FLOAT_BYTES", "value_bytes", "Message", "Dense", "GroupSparse", "SubModel", "Masked", "PerGroup", "Thresholds", "Count",
           "Bundle", "mask_bytes", "pack_bits", "unpack_bits"]

FLOAT_BYTES = 4  # a float32 value


def value_bytes(values: torch.Tensor) -> int:
    """The bytes one value of ``values`` takes on the wire: 4 (float32), 8 (float64)."""
    return values.element_size() if values.is_floating_point() else FLOAT_BYTES


def mask_bytes(groups: int) -> int:
    """One bit per group, rounded up to whole bytes."""
    return math.ceil(groups / 8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean vector as bytes, 8 entries a byte (the first entry in the highest bit)."""
    n = mask.numel()
    padded = torch.zeros(-(-n // 8) * 8, dtype=torch.uint8)
    padded[:n] = mask.detach().cpu().to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (padded.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The boolean vector of length ``n`` that :func:`pack_bits` packed."""
    shifts = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)
    return ((packed.view(-1, 1) >> shifts) & 1).view(-1)[:n].bool()


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
        return value_bytes(self.values) * self.values.numel()


@dataclass(frozen=True, eq=False)
class GroupSparse(Message):
    """Structured-sparse values: the units of ``layout`` with ``mask == 0`` are off, and neither
    their own groups nor the weights that read them are sent (:meth:`GroupMap.alive`); every
    other value is.  ``values`` is what the receiver reconstructs: zero wherever nothing was sent
    (the constructor zeroes those entries).  ``mask_bits``: whether the mask is sent, one bit per
    group (the receiver needs it to place the values)."""

    values: torch.Tensor
    mask: torch.Tensor
    layout: GroupMap
    mask_bits: bool = True

    def __post_init__(self):
        object.__setattr__(self, "values", self.values * self.alive)

    @cached_property
    def alive(self) -> torch.Tensor:
        """1 where a value is sent, 0 where it is not (float, as ``values``)."""
        return self.layout.alive(self.mask.to(self.values.dtype))

    @cached_property
    def nbytes(self) -> int:
        bits = mask_bytes(self.layout.num_groups) if self.mask_bits else 0
        return value_bytes(self.values) * int(self.alive.sum()) + bits

    def encode(self) -> bytes:
        """The wire format: the mask packed 8 units a byte (if sent), then the alive values as
        little-endian float32 (float64 in a float64 run) in state-vector order.
        ``len(encode()) == nbytes``."""
        import numpy as np

        head = np.packbits(self.mask.cpu().numpy() > 0).tobytes() if self.mask_bits else b""
        sent = self.values.detach().cpu()[self.alive.cpu() > 0].numpy().astype(f"<f{value_bytes(self.values)}")
        return head + sent.tobytes()

    @classmethod
    def decode(cls, blob: bytes, layout: GroupMap, mask: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> "GroupSparse":
        """The message from its wire format (``mask``: when the mask was not in it; ``dtype``: the
        values' type, float32 unless the run is float64)."""
        import numpy as np

        G = layout.num_groups
        if mask is None:
            bits = np.unpackbits(np.frombuffer(blob[:mask_bytes(G)], dtype=np.uint8))[:G]
            mask, blob, mask_bits = torch.from_numpy(bits.astype(np.float32)), blob[mask_bytes(G):], True
        else:
            mask_bits = False
        alive = layout.alive(mask.float()) > 0
        width = torch.empty((), dtype=dtype).element_size()
        if len(blob) % width:
            raise ValueError(f"a group-sparse message's values are {width} bytes each; got {len(blob)} bytes")
        sent = np.frombuffer(blob, dtype=f"<f{width}")
        if sent.size != int(alive.sum()):
            raise ValueError(f"a group-sparse message for this mask holds {int(alive.sum())} values; got {sent.size}")
        values = torch.zeros(layout.d, dtype=dtype)
        values[alive] = torch.from_numpy(sent.copy())
        return cls(values, mask, layout, mask_bits)


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
        return value_bytes(self.values) * self.layout.submodel_values(self.units)


@dataclass(frozen=True, eq=False)
class Masked(Message):
    """Unstructured-sparse values: those of ``values`` where ``mask`` (boolean, the layout of
    ``values``) is true; ``values`` is what the receiver reconstructs, zero elsewhere.  With
    ``mask_bits > 0`` the mask travels too, one bit per maskable position (a receiver that already
    knows it is sent none): ``4 |mask| + ceil(mask_bits / 8)``."""

    values: torch.Tensor
    mask: torch.Tensor
    mask_bits: int = 0

    def __post_init__(self):
        object.__setattr__(self, "values", self.values * self.mask)

    @property
    def nbytes(self) -> int:
        return value_bytes(self.values) * int(self.mask.sum()) + mask_bytes(self.mask_bits)


@dataclass(frozen=True, eq=False)
class PerGroup(Message):
    """One value per group (a gate threshold, the norm of a unit's unsent inputs), sent for the
    groups with ``mask == 1`` only (all of them when ``mask`` is None)."""

    values: torch.Tensor
    mask: torch.Tensor | None = None

    @cached_property
    def nbytes(self) -> int:
        sent = self.values.numel() if self.mask is None else int(self.mask.sum())
        return value_bytes(self.values) * sent


Thresholds = PerGroup


@dataclass(frozen=True, eq=False)
class Count(Message):
    """A whole number sent as one 32-bit integer (a client's example count)."""

    value: int

    @property
    def nbytes(self) -> int:
        return 4


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
