"""One request or reply between a SuperNode's ClientApp and its node's worker
(:mod:`emfl.flower.node`), over a Unix socket, without pickle.

A frame is an 8-byte big-endian length, a JSON header, then the raw bytes of each ``bytes`` value
the header lists: ``{"values": {key: int | float | str | bool | None}, "blobs": [[key, length],
...]}``.  Standard library only: the ClientApp side must start fast (no torch, no numpy).
"""

from __future__ import annotations

import json
import socket
import struct

__all__ = ["send", "receive", "call", "FrameError"]

MAX_HEADER = 1 << 24


class FrameError(RuntimeError):
    """A frame that cannot be read (the other side stopped, or sent something else)."""


def send(sock: socket.socket, fields: dict) -> None:
    values, blobs = {}, []
    for k, v in fields.items():
        if isinstance(v, (bytes, bytearray, memoryview)):
            blobs.append((k, bytes(v)))
        elif v is None or isinstance(v, (bool, int, float, str)):
            values[k] = v
        else:
            raise TypeError(f"a frame carries bytes, numbers, strings, booleans or None; {k} is {type(v).__name__}")
    header = json.dumps({"values": values, "blobs": [[k, len(b)] for k, b in blobs]}).encode()
    sock.sendall(struct.pack(">Q", len(header)) + header)
    for _, b in blobs:
        sock.sendall(b)


def _exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise FrameError(f"the connection closed {len(buf)} bytes into a {n}-byte read")
        buf.extend(chunk)
    return bytes(buf)


def receive(sock: socket.socket) -> dict:
    (n,) = struct.unpack(">Q", _exactly(sock, 8))
    if n > MAX_HEADER:
        raise FrameError(f"a frame header of {n} bytes: not an emfl frame")
    try:
        header = json.loads(_exactly(sock, n))
        fields = dict(header["values"])
        for k, length in header["blobs"]:
            fields[k] = _exactly(sock, int(length))
    except (ValueError, KeyError, TypeError) as err:
        raise FrameError(f"not an emfl frame ({err})") from None
    return fields


def call(address: str, fields: dict, timeout: float | None = None) -> dict:
    """Send ``fields`` to the worker listening on the Unix socket ``address``; its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as err:
            raise FrameError(f"this node's emfl worker does not answer at {address} ({err}): start the node with "
                             "`python -m emfl flower --supernode ...`, which starts its worker") from None
        send(sock, fields)
        return receive(sock)
