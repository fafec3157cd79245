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
* :class:`Masked`: unstructured-sparse values (FedSpa's personal masks) at a mask both ends
  know: ``4 |mask|``;
* :class:`Bits`: a boolean vector, one bit per entry (a new mask): ``ceil(n / 8)``;
* :class:`PerGroup` (alias ``Thresholds``): one value per group present: ``4 sum_g m_g``;
* :class:`Count`: a whole number (a client's example count): 4 bytes;
* :class:`Bundle`: named parts sent together (a model and a control variate): the sum of the parts.

Each message type owns its wire form: ``form, payload = msg.to_wire()`` gives the bytes it
counts (``len(payload) == msg.nbytes``) and a small JSON-able ``form`` (its ``kind`` and lengths);
``Message.from_wire(form, payload, known)`` rebuilds it, with ``known`` what the receiver supplies
itself (the keywords of :meth:`emfl.nn.algorithms.base.Algorithm.receiver`).  Values travel as
little-endian float32 (float64 in a float64 run: the form says ``"f8": true``) in state-vector
order; masks as bits, 8 a byte, the first entry in the highest bit.  :mod:`emfl.nn.wire` is the
entry point a transport uses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch

from emfl.nn.groups import GroupMap

__all__ = ["FLOAT_BYTES", "value_bytes", "Message", "Dense", "GroupSparse", "SubModel", "Masked", "Bits", "PerGroup",
           "Thresholds", "Count", "Bundle", "mask_bytes", "pack_bits", "unpack_bits", "WireError"]

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


class WireError(ValueError):
    """A payload that does not fit its form, a receiver that lacks what it must supply, or a
    message without a wire form."""


def _floats(t: torch.Tensor) -> bytes:
    return t.detach().cpu().numpy().astype(f"<f{value_bytes(t)}", copy=False).tobytes()


def _read_floats(buf: bytes, n: int, dtype=torch.float32) -> torch.Tensor:
    width = torch.empty((), dtype=dtype).element_size()
    if len(buf) != width * n:
        raise WireError(f"expected {n} {str(dtype).removeprefix('torch.')} values ({width * n} bytes); "
                        f"got {len(buf)} bytes")
    return torch.from_numpy(np.frombuffer(buf, dtype=f"<f{width}").copy())


def _need(known: dict, key: str, what: str):
    if known.get(key) is None:
        raise WireError(f"{what} (the receiver's `{key}`, from the algorithm's receiver())")
    return known[key]


class Message:
    """Something sent over the network; ``nbytes`` is its exact size.  A subclass with a wire
    form sets ``kind`` (its name on the wire) and implements ``encode_wire``/``decode_wire``."""

    kind: ClassVar[str] = ""
    kinds: ClassVar[dict] = {}  # kind -> the message class (filled as subclasses are defined)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            Message.kinds[cls.kind] = cls

    @property
    def nbytes(self) -> int:  # pragma: no cover - every message defines it
        raise NotImplementedError

    # ---- the wire
    def to_wire(self, context: dict | None = None) -> tuple:
        """``(form, payload)`` with ``len(payload) == nbytes``.  ``context``: what the parts of a
        bundle sent before this one established (a group-sparse part's mask)."""
        if not self.kind:
            raise WireError(f"{type(self).__name__} messages have no wire form; "
                            "run this algorithm with `python -m emfl run`")
        form, payload = self.encode_wire({} if context is None else context)
        form = {"kind": self.kind, **form}
        values = getattr(self, "values", None)
        if isinstance(values, torch.Tensor) and values.dtype == torch.float64:
            form["f8"] = True
        if len(payload) != self.nbytes:  # the wire and the count agree, always
            raise WireError(f"{type(self).__name__}: {len(payload)} bytes encoded but {self.nbytes} counted")
        return form, payload

    @staticmethod
    def from_wire(form: dict, payload: bytes, known: dict | None = None) -> "Message":
        """The message ``to_wire`` gave ``(form, payload)`` for; ``known``: what the receiver
        supplies itself (``group_map``, ``units``, ``base``, ``mask``)."""
        cls = Message.kinds.get(form.get("kind"))
        if cls is None:
            raise WireError(f"unknown message kind {form.get('kind')!r}")
        dtype = torch.float64 if form.get("f8") else torch.float32
        return cls.decode_wire(form, payload, {} if known is None else known, dtype)

    def encode_wire(self, context: dict) -> tuple:  # pragma: no cover - kinds define it
        """``(form fields, payload)`` of this message."""
        raise NotImplementedError

    @classmethod
    def decode_wire(cls, form: dict, payload: bytes, known: dict, dtype: torch.dtype) -> "Message":
        raise NotImplementedError  # pragma: no cover - kinds define it

    def to(self, device) -> "Message":
        """The same message with its tensors on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                 else getattr(self, f.name) for f in dataclasses.fields(self)}
        return type(self)(**moved)


@dataclass(frozen=True, eq=False)
class Dense(Message):
    """Every value of ``values`` (a model, a delta, a control variate)."""

    values: torch.Tensor
    kind: ClassVar[str] = "dense"

    @cached_property
    def nbytes(self) -> int:
        return value_bytes(self.values) * self.values.numel()

    def encode_wire(self, context):
        return {"n": self.values.numel()}, _floats(self.values)

    @classmethod
    def decode_wire(cls, form, payload, known, dtype):
        return cls(_read_floats(payload, form["n"], dtype))


@dataclass(frozen=True, eq=False)
class GroupSparse(Message):
    """Structured-sparse values: the units of ``group_map`` with ``mask == 0`` are off, and neither
    their own groups nor the weights that read them are sent (:meth:`GroupMap.alive`); every
    other value is.  ``values`` is what the receiver reconstructs: zero wherever nothing was sent
    (the constructor zeroes those entries).  ``mask_bits``: whether the mask is sent, one bit per
    group (the receiver needs it to place the values)."""

    values: torch.Tensor
    mask: torch.Tensor
    group_map: GroupMap
    mask_bits: bool = True
    kind: ClassVar[str] = "group-sparse"

    def __post_init__(self):
        object.__setattr__(self, "values", self.values * self.alive)

    @cached_property
    def alive(self) -> torch.Tensor:
        """1 where a value is sent, 0 where it is not (float, as ``values``)."""
        return self.group_map.alive(self.mask.to(self.values.dtype))

    @cached_property
    def nbytes(self) -> int:
        bits = mask_bytes(self.group_map.num_groups) if self.mask_bits else 0
        return value_bytes(self.values) * int(self.alive.sum()) + bits

    def encode(self) -> bytes:
        """The wire format: the mask packed 8 units a byte (if sent), then the alive values as
        little-endian float32 (float64 in a float64 run) in state-vector order.
        ``len(encode()) == nbytes``."""
        head = np.packbits(self.mask.cpu().numpy() > 0).tobytes() if self.mask_bits else b""
        sent = self.values.detach().cpu()[self.alive.cpu() > 0].numpy().astype(f"<f{value_bytes(self.values)}")
        return head + sent.tobytes()

    @classmethod
    def decode(cls, blob: bytes, group_map: GroupMap, mask: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> "GroupSparse":
        """The message from its wire format (``mask``: when the mask was not in it; ``dtype``: the
        values' type, float32 unless the run is float64)."""
        G = group_map.num_groups
        if mask is None:
            bits = np.unpackbits(np.frombuffer(blob[:mask_bytes(G)], dtype=np.uint8))[:G]
            mask, blob, mask_bits = torch.from_numpy(bits.astype(np.float32)), blob[mask_bytes(G):], True
        else:
            mask_bits = False
        alive = group_map.alive(mask.float()) > 0
        width = torch.empty((), dtype=dtype).element_size()
        if len(blob) % width:
            raise ValueError(f"a group-sparse message's values are {width} bytes each; got {len(blob)} bytes")
        sent = np.frombuffer(blob, dtype=f"<f{width}")
        if sent.size != int(alive.sum()):
            raise ValueError(f"a group-sparse message for this mask holds {int(alive.sum())} values; got {sent.size}")
        values = torch.zeros(group_map.d, dtype=dtype)
        values[alive] = torch.from_numpy(sent.copy())
        return cls(values, mask, group_map, mask_bits)

    def encode_wire(self, context):
        context["unit_mask"] = self.mask.float().cpu()  # a masked PerGroup after it in a bundle uses it
        return {"mask_bits": bool(self.mask_bits), "d": self.values.numel()}, self.encode()

    @classmethod
    def decode_wire(cls, form, payload, known, dtype):
        group_map = _need(known, "group_map", "a group-sparse message needs the model's group map to place its values")
        if group_map.d != form["d"]:
            raise WireError(f"a group-sparse message for {form['d']} values, but the receiver's model has {group_map.d}")
        if not form["mask_bits"]:
            raise WireError("a group-sparse message without its mask cannot be placed")
        try:
            msg = cls.decode(payload, group_map, dtype=dtype)
        except ValueError as err:
            raise WireError(str(err)) from None
        known["unit_mask"] = msg.mask
        return msg


@dataclass(frozen=True, eq=False)
class SubModel(Message):
    """A structurally smaller model: the units with ``units == 1`` of every layer of ``group_map``
    (a chain of layers), each with its weights from the kept units of the layer before and its
    bias; dropped rows and columns are removed, not zeroed.  ``values`` is the full state vector
    (what lies outside the sub-model is not sent)."""

    values: torch.Tensor
    units: torch.Tensor
    group_map: GroupMap
    kind: ClassVar[str] = "submodel"

    @cached_property
    def nbytes(self) -> int:
        return value_bytes(self.values) * self.group_map.submodel_values(self.units)

    def encode_wire(self, context):
        alive = self.group_map.alive(self.units.float()) > 0
        return {"d": self.values.numel()}, _floats(self.values[alive.to(self.values.device)])

    @classmethod
    def decode_wire(cls, form, payload, known, dtype):
        group_map = _need(known, "group_map", "a submodel message needs the model's group map to place its values")
        if group_map.d != form["d"]:
            raise WireError(f"a submodel message for {form['d']} values, but the receiver's model has {group_map.d}")
        units = _need(known, "units", "a submodel message needs the kept units, which the receiver draws itself")
        alive = group_map.alive(units.float().cpu()) > 0
        base = known.get("base")
        values = torch.zeros(group_map.d, dtype=dtype) if base is None else base.detach().cpu().to(dtype).clone()
        values[alive] = _read_floats(payload, int(alive.sum()), dtype)
        return cls(values, units, group_map)


@dataclass(frozen=True, eq=False)
class Masked(Message):
    """Unstructured-sparse values: those of ``values`` where ``mask`` (boolean, the shape of
    ``values``) is true; ``values`` is what the receiver reconstructs, zero elsewhere.  The mask
    does not travel: both ends know it (a new one goes as :class:`Bits` beside it):
    ``4 |mask|``."""

    values: torch.Tensor
    mask: torch.Tensor
    kind: ClassVar[str] = "masked"

    def __post_init__(self):
        object.__setattr__(self, "values", self.values * self.mask)

    @property
    def nbytes(self) -> int:
        return value_bytes(self.values) * int(self.mask.sum())

    def encode_wire(self, context):
        return {"d": self.values.numel()}, _floats(self.values[self.mask.to(self.values.device)])

    @classmethod
    def decode_wire(cls, form, payload, known, dtype):
        mask = _need(known, "mask", "a masked message needs the mask, which the receiver knows").bool().cpu()
        if mask.numel() != form["d"]:
            raise WireError(f"a masked message for {form['d']} values, but the receiver's mask has {mask.numel()}")
        values = torch.zeros(form["d"], dtype=dtype)
        values[mask] = _read_floats(payload, int(mask.sum()), dtype)
        return cls(values, mask)


@dataclass(frozen=True, eq=False)
class Bits(Message):
    """A boolean vector (a new mask), one bit per entry, 8 a byte: ``ceil(n / 8)``."""

    bits: torch.Tensor
    kind: ClassVar[str] = "bits"

    @property
    def nbytes(self) -> int:
        return mask_bytes(self.bits.numel())

    def encode_wire(self, context):
        return {"n": self.bits.numel()}, pack_bits(self.bits).numpy().tobytes()

    @classmethod
    def decode_wire(cls, form, payload, known, dtype):
        n = form["n"]
        if len(payload) != mask_bytes(n):
            raise WireError(f"{n} bits take {mask_bytes(n)} bytes; got {len(payload)}")
        return cls(unpack_bits(torch.frombuffer(bytearray(payload), dtype=torch.uint8), n))


@dataclass(frozen=True, eq=False)
class PerGroup(Message):
    """One value per group (a gate threshold, the norm of a unit's unsent inputs), sent for the
    groups with ``mask == 1`` only (all of them when ``mask`` is None)."""

    values: torch.Tensor
    mask: torch.Tensor | None = None
    kind: ClassVar[str] = "per-group"

    @cached_property
    def nbytes(self) -> int:
        sent = self.values.numel() if self.mask is None else int(self.mask.sum())
        return value_bytes(self.values) * sent

    def encode_wire(self, context):
        """Masked, the values of the groups the bundle's group-sparse part before it keeps
        (FedSparse's thresholds and FedL1's norms travel for the units the model part keeps)."""
        if self.mask is None:
            return {"n": self.values.numel(), "masked": False}, _floats(self.values)
        unit_mask = context.get("unit_mask")
        if unit_mask is None or not torch.equal(self.mask.float().cpu(), unit_mask):
            raise WireError("a masked PerGroup travels only in a Bundle after the group-sparse part whose mask it uses")
        return {"n": self.values.numel(), "masked": True}, _floats(self.values[self.mask.cpu() > 0])

    @classmethod
    def decode_wire(cls, form, payload, known, dtype):
        n = form["n"]
        if not form["masked"]:
            return cls(_read_floats(payload, n, dtype))
        mask = known.get("unit_mask")
        if mask is None:
            raise WireError("a masked per-group part must follow the group-sparse part whose mask it uses")
        values = torch.zeros(n, dtype=dtype)
        values[mask > 0] = _read_floats(payload, int((mask > 0).sum()), dtype)
        return cls(values, mask)


Thresholds = PerGroup


@dataclass(frozen=True, eq=False)
class Count(Message):
    """A whole number sent as one 32-bit integer (a client's example count)."""

    value: int
    kind: ClassVar[str] = "count"

    @property
    def nbytes(self) -> int:
        return 4

    def encode_wire(self, context):
        return {}, int(self.value).to_bytes(4, "little", signed=False)

    @classmethod
    def decode_wire(cls, form, payload, known, dtype):
        if len(payload) != 4:
            raise WireError(f"a count is 4 bytes; got {len(payload)}")
        return cls(int.from_bytes(payload, "little"))


class Bundle(Message):
    """Named parts sent together: ``Bundle(w=Dense(w), c=Dense(c))``; ``bundle["w"]`` is a part."""

    def __init__(self, **parts: Message):
        if not parts or not all(isinstance(p, Message) for p in parts.values()):
            raise ValueError("a Bundle needs one or more named messages, e.g. Bundle(w=Dense(w))")
        self.parts = parts

    def __getitem__(self, name: str) -> Message:
        return self.parts[name]

    kind = "bundle"

    def encode_wire(self, context):
        """The parts one after the other, each with its form and length."""
        context, forms, blobs = dict(context), [], []
        for name, part in self.parts.items():
            f, b = part.to_wire(context)
            forms.append([name, {**f, "bytes": len(b)}])
            blobs.append(b)
        return {"parts": forms}, b"".join(blobs)

    @classmethod
    def decode_wire(cls, form, payload, known, dtype):
        parts, at = {}, 0
        for name, f in form["parts"]:
            parts[name] = Message.from_wire(f, payload[at:at + f["bytes"]], known)
            at += f["bytes"]
        if at != len(payload):
            raise WireError(f"a bundle of {at} bytes arrived with {len(payload)}")
        return cls(**parts)

    def to(self, device) -> "Bundle":
        return Bundle(**{k: v.to(device) for k, v in self.parts.items()})

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts.values())

    def __repr__(self) -> str:
        return f"Bundle({', '.join(f'{k}={type(v).__name__}' for k, v in self.parts.items())})"
