"""Messages as bytes on a wire: exactly the bytes :mod:`emfl.nn.messages` counts.

``form, payload = encode(msg)``: ``payload`` is the message's content, ``len(payload) ==
msg.nbytes``; ``form`` (a small JSON-able dict: the message's kind and lengths) is what both ends
know from the algorithm's code and the model, the framing a transport adds (Flower's records,
:mod:`emfl.flower`).  ``decode(form, payload, **known)`` rebuilds the message; what the payload
leaves out, the receiver supplies itself, as the algorithm's ``receiver(job, sent)`` says:

* ``group_map``: the :class:`~emfl.nn.groups.GroupMap` of the model both ends build, which places
  the values of structured-sparse messages;
* ``units``: the kept units of a sub-model, which both ends draw from the seed of the round and
  client; ``base``: the values outside a sub-model, which the server knows and the client does
  not need;
* ``mask``: the mask of unstructured-sparse values, which both ends know.

Each message type writes and reads its own bytes (``Message.to_wire`` / ``Message.from_wire``,
found by the form's ``kind``); this module is the entry point a transport calls and names none
of them.  Values are little-endian float32 in state-vector order (float64 in a run with
``precision="float64"``: the form then says ``"f8": true``); masks are packed 8 entries a byte,
the first in the highest bit.
"""

from __future__ import annotations

import torch

from emfl.nn.messages import Message, WireError

__all__ = ["encode", "decode"]

WireError = WireError  # the error both functions raise (defined with the messages)


def encode(msg: Message) -> tuple:
    """``(form, payload)`` with ``len(payload) == msg.nbytes``."""
    if not isinstance(msg, Message):
        raise WireError(f"only messages travel; got {type(msg).__name__}")
    return msg.to_wire()


def decode(form: dict, payload: bytes, group_map=None, *, device=None, **known) -> Message:
    """The message ``encode`` gave ``(form, payload)`` for, its tensors on ``device`` (default the
    CPU).  ``group_map`` and ``known``: what the receiver supplies itself (see the module's text)."""
    if not isinstance(form, dict):
        raise WireError(f"a message's form is a dict with its kind; got {type(form).__name__}")
    if group_map is not None:
        known["group_map"] = group_map
    msg = Message.from_wire(form, bytes(payload), known)
    return msg if device is None else msg.to(torch.device(device))
