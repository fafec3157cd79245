"""Messages as bytes on a wire: exactly the bytes :mod:`emfl.nn.messages` counts.

``form, payload = encode(msg)``: ``payload`` is the message's content, ``len(payload) ==
msg.nbytes``; ``form`` (a small JSON-able dict: the message's kind and lengths) is what both ends
know from the algorithm's code and the model, the framing a transport adds (Flower's records,
:mod:`emfl.flower`).  ``decode(form, payload, layout=..., units=...)`` rebuilds the message; what
the payload leaves out, the receiver supplies itself:

* ``layout`` (the :class:`~emfl.nn.groups.GroupMap` of the model both ends build) places the
  values of :class:`GroupSparse` and :class:`SubModel` messages;
* ``units``: a :class:`SubModel`'s kept units, which both ends draw from the seed of the round and
  client (FedDrop's ``units(job)``) and the server remembers for the reply; ``base``: the values
  outside a sub-model, which the server knows (its own model, sent down) and the client does not
  need (it trains the kept units only);
* a :class:`PerGroup` part of a :class:`Bundle` with a mask uses the mask of the bundle's
  group-sparse part before it (FedSparse's thresholds and FedL1's norms travel for the units the
  model part keeps).

Values are little-endian float32 in state-vector order (float64 in a run with
``precision="float64"``: the form then says ``"f8": true``); masks are packed 8 units a byte, the first
unit in the highest bit.  :class:`Masked` (FedSpa's personal masks) has no wire form yet: its reply
carries a new mask the message object does not hold.
"""

from __future__ import annotations

import numpy as np
import torch

from emfl.nn.messages import Bundle, Count, Dense, GroupSparse, Message, PerGroup, SubModel, value_bytes

__all__ = ["encode", "decode", "WireError"]


class WireError(ValueError):
    """A payload that does not fit its form, or a message without a wire form."""


def _floats(t: torch.Tensor) -> bytes:
    return t.detach().cpu().numpy().astype(f"<f{value_bytes(t)}", copy=False).tobytes()


def _read_floats(buf: bytes, n: int, dtype=torch.float32) -> torch.Tensor:
    width = torch.empty((), dtype=dtype).element_size()
    if len(buf) != width * n:
        raise WireError(f"expected {n} {str(dtype).removeprefix('torch.')} values ({width * n} bytes); "
                        f"got {len(buf)} bytes")
    return torch.from_numpy(np.frombuffer(buf, dtype=f"<f{width}").copy())


def encode(msg: Message, _mask=None) -> tuple:
    """``(form, payload)`` with ``len(payload) == msg.nbytes``."""
    if isinstance(msg, Dense):
        form, payload = {"kind": "dense", "n": msg.values.numel()}, _floats(msg.values)
    elif isinstance(msg, GroupSparse):  # its own wire format: the mask's bits, then the alive values
        form, payload = {"kind": "group-sparse", "mask_bits": bool(msg.mask_bits), "d": msg.values.numel()}, msg.encode()
    elif isinstance(msg, SubModel):
        alive = msg.layout.alive(msg.units.float()) > 0
        form, payload = {"kind": "submodel", "d": msg.values.numel()}, _floats(msg.values[alive])
    elif isinstance(msg, PerGroup):
        if msg.mask is not None and (_mask is None or not torch.equal(msg.mask.float().cpu(), _mask)):
            raise WireError("a masked PerGroup travels only in a Bundle after the group-sparse part whose mask it uses")
        sent = msg.values if msg.mask is None else msg.values[msg.mask.cpu() > 0]
        form, payload = {"kind": "per-group", "n": msg.values.numel(), "masked": msg.mask is not None}, _floats(sent)
    elif isinstance(msg, Count):
        form, payload = {"kind": "count"}, int(msg.value).to_bytes(4, "little", signed=False)
    elif isinstance(msg, Bundle):
        parts, blobs, mask = [], [], None
        for name, part in msg.parts.items():
            f, b = encode(part, mask)
            if isinstance(part, GroupSparse):
                mask = part.mask.float().cpu()
            f["bytes"] = len(b)
            parts.append([name, f])
            blobs.append(b)
        form, payload = {"kind": "bundle", "parts": parts}, b"".join(blobs)
    else:
        raise WireError(f"{type(msg).__name__} messages have no wire form; run this algorithm with `python -m emfl run`")
    values = getattr(msg, "values", None)  # a Count or a Bundle has none (a Bundle's parts say it)
    if isinstance(values, torch.Tensor) and values.dtype == torch.float64:
        form["f8"] = True
    if len(payload) != msg.nbytes:  # the wire and the count agree, always
        raise WireError(f"{type(msg).__name__}: {len(payload)} bytes encoded but {msg.nbytes} counted")
    return form, payload


def decode(form: dict, payload: bytes, layout=None, units=None, base=None, device=None, _mask=None) -> Message:
    """The message ``encode`` gave ``(form, payload)`` for, its tensors on ``device`` (default the
    CPU).  ``layout``: the model's group map (group-sparse and sub-model messages); ``units``: a
    sub-model's kept units; ``base``: the values outside the sub-model (default zeros)."""
    msg = _decode(form, payload, layout, units, base, _mask)
    return msg if device is None else _to(msg, torch.device(device))


def _to(msg: Message, device) -> Message:
    if isinstance(msg, Dense):
        return Dense(msg.values.to(device))
    if isinstance(msg, GroupSparse):
        return GroupSparse(msg.values.to(device), msg.mask.to(device), msg.layout, msg.mask_bits)
    if isinstance(msg, SubModel):
        return SubModel(msg.values.to(device), msg.units.to(device), msg.layout)
    if isinstance(msg, PerGroup):
        return PerGroup(msg.values.to(device), None if msg.mask is None else msg.mask.to(device))
    if isinstance(msg, Bundle):
        return Bundle(**{k: _to(v, device) for k, v in msg.parts.items()})
    return msg


def _decode(form: dict, payload: bytes, layout=None, units=None, base=None, _mask=None) -> Message:
    kind = form.get("kind")
    dtype = torch.float64 if form.get("f8") else torch.float32
    if kind == "dense":
        return Dense(_read_floats(payload, form["n"], dtype))
    if kind in ("group-sparse", "submodel"):
        if layout is None:
            raise WireError(f"a {kind} message needs the model's layout to place its values")
        d = form["d"]
        if layout.d != d:
            raise WireError(f"a {kind} message for {d} values, but the receiver's model has {layout.d}")
        if kind == "group-sparse":
            if not form["mask_bits"]:
                raise WireError("a group-sparse message without its mask cannot be placed")
            try:
                return GroupSparse.decode(payload, layout, dtype=dtype)
            except ValueError as err:
                raise WireError(str(err)) from None
        if units is None:
            raise WireError("a submodel message needs the kept units, which the receiver draws itself")
        mask, body = units.float().cpu(), payload
        alive = layout.alive(mask) > 0
        values = torch.zeros(d, dtype=dtype) if base is None else base.detach().cpu().to(dtype).clone()
        values[alive] = _read_floats(body, int(alive.sum()), dtype)
        return SubModel(values, units, layout)
    if kind == "per-group":
        n = form["n"]
        if not form["masked"]:
            return PerGroup(_read_floats(payload, n, dtype))
        if _mask is None:
            raise WireError("a masked per-group part must follow the group-sparse part whose mask it uses")
        values = torch.zeros(n, dtype=dtype)
        values[_mask > 0] = _read_floats(payload, int((_mask > 0).sum()), dtype)
        return PerGroup(values, _mask)
    if kind == "count":
        if len(payload) != 4:
            raise WireError(f"a count is 4 bytes; got {len(payload)}")
        return Count(int.from_bytes(payload, "little"))
    if kind == "bundle":
        parts, at, mask = {}, 0, None
        for name, f in form["parts"]:
            part = _decode(f, payload[at:at + f["bytes"]], layout, units, base, mask)
            at += f["bytes"]
            if isinstance(part, GroupSparse):
                mask = part.mask
            parts[name] = part
        if at != len(payload):
            raise WireError(f"a bundle of {at} bytes arrived with {len(payload)}")
        return Bundle(**parts)
    raise WireError(f"unknown message kind {kind!r}")
