"""What a Flower node's clients remember between the rounds they take part in (a control
variate, a personal mask), kept on the node's own disk so that a stopped run resumes with it.

In the engine a client's memory is part of the server's checkpoint (the engine plays every
client).  On Flower it never leaves the node that serves the client, so the server's checkpoint
cannot hold it: each node writes it to ``BASE/NAME`` (``BASE``: the node's checkpoint folder;
``NAME``: the run's checkpoint file name with ``.memory``), one file per client and round::

    NAME/client-7/round-000041.npz      # what client 7 kept after round index 41 (0-based)

The server's checkpoint after ``c`` rounds pairs with each client's newest file of a round index
below ``c``.  So a node

* **recalls** (:meth:`ClientMemory.recall`) for round index ``rnd`` the newest file below ``rnd``,
  and removes the files at ``rnd`` and later (a stopped run wrote them after the checkpoint it
  resumes from);
* **keeps** (:meth:`ClientMemory.keep`) a new file atomically (written beside, then renamed), then
  removes the files no resume can need: the server checkpoints at least every ``every`` rounds,
  so of the files ``every`` or more rounds back only the newest is kept.

Files are ``.npz`` archives read with ``allow_pickle=False`` (:func:`to_bytes`, :func:`from_bytes`).
A client is served by the same machine only if the nodes start in the same order: on one machine
(the simulation, a deployment whose nodes all run here) every node shares ``BASE``, so any order
works; across machines the nodes' order is Flower's (their random ids), and a resume of an
algorithm with client memory should run on one machine (or with ``emfl run --resume``, which reads
this folder on the machine that holds it).  No torch here: a node's ClientApp imports this module.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

__all__ = ["ClientMemory", "memory_name", "to_bytes", "from_bytes"]

_FILE = re.compile(r"round-(\d+)\.npz$")


def memory_name(checkpoint: str | Path) -> str:
    """The folder name of a run's client memory: its checkpoint's file name with ``.memory``."""
    return Path(checkpoint).name + ".memory"


class ClientMemory:
    """The client memory of one run on one machine (a folder; see the module's text)."""

    def __init__(self, folder, every: int = 1):
        self.folder = Path(folder)
        self.every = max(1, int(every))

    def _versions(self, s: int) -> list:
        """``(round index, path)`` of client ``s``'s files, oldest first."""
        d = self.folder / f"client-{int(s)}"
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = _FILE.fullmatch(name)
            if m:
                found.append((int(m.group(1)), d / name))
        return sorted(found)

    def clients(self) -> list:
        """The clients that have a file here."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted(int(n[len("client-"):]) for n in names if n.startswith("client-") and n[7:].isdigit())

    def recall(self, s: int, rnd: int) -> bytes | None:
        """Client ``s``'s memory for round index ``rnd``: its newest file below ``rnd`` (None: it
        has none); the files at ``rnd`` and later are removed."""
        best = None
        for r, path in self._versions(s):
            if r < rnd:
                best = path
            else:
                path.unlink(missing_ok=True)
        return best.read_bytes() if best is not None else None

    def keep(self, s: int, rnd: int, blob: bytes) -> None:
        """Write client ``s``'s memory after round index ``rnd``; drop the files no resume needs."""
        d = self.folder / f"client-{int(s)}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"round-{int(rnd):06d}.npz"
        tmp = d / f".round-{int(rnd):06d}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        old = [p for r, p in self._versions(s) if r <= int(rnd) - self.every]
        for p in old[:-1]:  # the newest of them is what a resume from the oldest possible checkpoint reads
            p.unlink(missing_ok=True)


def to_bytes(memory) -> bytes:
    """A client's memory (a tensor, or a dict of tensors) as the bytes of an ``.npz`` archive."""
    import numpy as np
    import torch

    from emfl.flower.errors import FlowerError

    if isinstance(memory, torch.Tensor):
        arrays = {"single": memory}
    elif isinstance(memory, dict) and all(isinstance(v, torch.Tensor) for v in memory.values()):
        arrays = {f"dict.{k}": v for k, v in memory.items()}
    else:
        raise FlowerError(f"a client's memory travels to the node's state as a tensor or a dict of tensors; "
                          f"got {type(memory).__name__}")
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in arrays.items()})
    return buf.getvalue()


def from_bytes(blob: bytes | None):
    """What :func:`to_bytes` wrote (read without pickle), or None."""
    if blob is None:
        return None
    import numpy as np
    import torch

    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: torch.from_numpy(z[k].copy()) for k in z.files}
    if "single" in arrays:
        return arrays["single"]
    return {k[len("dict."):]: v for k, v in arrays.items()}
