"""Federated image data sets held as uint8 tensors, split into client shards.

A :class:`FederatedData` keeps, for every client (a CIFAR-10 shard or a FEMNIST writer), its
training images and labels and its own test images and labels.  Images stay uint8 (N, C, H, W)
in memory; :meth:`FederatedData.normalize` turns a batch into float32 on the fly.

Where data lives:

* ``data_dir`` (``--data-dir`` on the command line, else ``$EMFL_DATA_DIR``): the raw data, e.g.
  a folder laid out like ``../shared/data`` (the CIFAR-10 JPEG tarball and the FEMNIST npz side
  by side).  It may be read-only.
* :func:`cache_dir` (``$EMFL_CACHE_DIR``, else ``$XDG_CACHE_HOME/emfl``, else ``~/.cache/emfl``):
  decoded tensors and unpacked archives, written once, atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "FederatedData",
    "DataError",
    "resolve_data_dir",
    "cache_dir",
    "atomic_save",
    "file_md5",
    "sample_with_proportions",
    "channel_stats",
]


class DataError(RuntimeError):
    """Missing, unreadable or corrupt data; the message says what to do."""


@dataclass
class FederatedData:
    """Client shards of an image-classification data set."""

    name: str
    num_classes: int
    train_x: list  # per client: uint8 tensor (n_s, C, H, W)
    train_y: list  # per client: int64 tensor (n_s,)
    test_x: list  # per client: uint8 tensor (m_s, C, H, W)
    test_y: list  # per client: int64 tensor (m_s,)
    mean: tuple  # per-channel mean of x / 255 on the training set
    std: tuple  # per-channel standard deviation of x / 255
    info: dict = field(default_factory=dict)  # how it was made (split, alpha, seed, source)
    global_x: torch.Tensor | None = None  # the union of the clients' test sets, when they overlap
    global_y: torch.Tensor | None = None

    def __post_init__(self):
        n = len(self.train_x)
        if not (len(self.train_y) == len(self.test_x) == len(self.test_y) == n) or n == 0:
            raise ValueError("train_x, train_y, test_x and test_y need one entry per client (at least one)")

    @property
    def num_clients(self) -> int:
        return len(self.train_x)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.train_x[0].shape[1:])

    def train_sizes(self) -> np.ndarray:
        return np.array([len(y) for y in self.train_y])

    def test_sizes(self) -> np.ndarray:
        return np.array([len(y) for y in self.test_y])

    def normalize(self, x: torch.Tensor, device=None) -> torch.Tensor:
        """uint8 images -> float32 ``(x / 255 - mean) / std`` on ``device``."""
        x = x.to(device, non_blocking=True).float().div_(255.0)
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(m).div_(s)

    def test_union(self) -> tuple:
        """The union of the clients' test sets, where global accuracy is measured: ``global_x``
        and ``global_y`` when given (test sets that overlap), else their concatenation."""
        if self.global_x is not None:
            return self.global_x, self.global_y
        return torch.cat(self.test_x), torch.cat(self.test_y)


def resolve_data_dir(data_dir=None) -> Path:
    """``data_dir``, else ``$EMFL_DATA_DIR``; a clear error if neither names a folder."""
    raw = data_dir if data_dir is not None else os.environ.get("EMFL_DATA_DIR")
    if raw is None:
        raise DataError(
            "no data folder given: pass --data-dir PATH (or set EMFL_DATA_DIR), e.g. a folder "
            "holding cifar10_jpeg_imagefolder.tar.gz and femnist_leaf_by_writer.npz, or an empty "
            "folder together with --download"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise DataError(f"the data folder {path} does not exist; pass --data-dir with an existing folder")
    return path


def cache_dir() -> Path:
    """Folder for decoded tensors: ``$EMFL_CACHE_DIR``, ``$XDG_CACHE_HOME/emfl`` or ``~/.cache/emfl``."""
    env = os.environ.get("EMFL_CACHE_DIR")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "emfl"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_save(obj, path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_md5(path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def channel_stats(x: torch.Tensor) -> tuple:
    """Per-channel mean and standard deviation of ``x / 255`` for uint8 images (N, C, H, W),
    exactly and without a float copy (from each channel's histogram of the 256 values)."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError("channel_stats expects uint8 images shaped (N, C, H, W)")
    v = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        n = h.sum()
        m = (h * v).sum() / n
        var = (h * (v - m) ** 2).sum() / (n - 1)
        means.append(float(m))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


def sample_with_proportions(pools: list, q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` items class by class: each draw picks a class from ``q`` and takes the next item
    of that class's pool; a class that runs out is dropped and ``q`` renormalised (Hsu et al.).
    If every class with weight has run out, the remaining classes are drawn uniformly.

    ``pools`` is a list (one per class) of lists of item indices, consumed in place.  Returns the
    drawn indices."""
    sizes = np.array([len(p) for p in pools])
    if sizes.sum() < n:
        raise ValueError(f"cannot draw {n} items from pools holding {sizes.sum()}")
    w = np.where(sizes > 0, np.asarray(q, dtype=float), 0.0)
    u = rng.random(n)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        total = w.sum()
        if total <= 0:
            w = (sizes > 0).astype(float)
            total = w.sum()
        k = min(int(np.searchsorted(np.cumsum(w), u[i] * total, side="right")), len(pools) - 1)
        out[i] = pools[k].pop()
        sizes[k] -= 1
        if sizes[k] == 0:
            w[k] = 0.0
    return out


def generated_federation(clients: int = 6, n: int = 24, m: int = 8, shape: tuple = (3, 32, 32),
                         classes: int = 10, seed: int = 0) -> FederatedData:
    """A federation of random images and labels (no files needed): ``clients`` clients with ``n``
    training and ``m`` test examples each.  For tests and for trying the engine without data;
    nothing can be learnt from it, so accuracy stays near chance."""
    g = torch.Generator().manual_seed(seed)
    tx = [torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8) for _ in range(clients)]
    ty = [torch.randint(0, classes, (n,), generator=g) for _ in range(clients)]
    ex = [torch.randint(0, 256, (m, *shape), generator=g, dtype=torch.uint8) for _ in range(clients)]
    ey = [torch.randint(0, classes, (m,), generator=g) for _ in range(clients)]
    mean, std = channel_stats(torch.cat(tx))
    return FederatedData("cifar10" if shape[0] == 3 else "femnist", classes, tx, ty, ex, ey, mean, std,
                         {"source": "generated"})
