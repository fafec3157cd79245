"""CIFAR-10 as federated shards: the non-i.i.d. split of Hsu, Qi and Brown (2019).

Sources, tried in this order inside the data folder (``--data-dir``):

1. ``cifar10_jpeg_imagefolder.tar.gz`` (the JPEG copy in ``../shared/data``): unpacked once into
   the cache folder, then read as an image folder;
2. an image folder: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, directly or under
   ``cifar10/``;
3. the official python version, ``cifar-10-batches-py/`` (or its ``cifar-10-python.tar.gz``),
   read through torchvision, which checks every file's md5;
4. with ``download=True``: torchvision downloads the official archive into the data folder
   (md5-checked) and 3. applies.

Whatever the source, the decoded images are cached once as uint8 tensors in :func:`cache_dir`,
so later runs start in seconds.

**The split.** Each shard draws class proportions ``q ~ Dir(alpha * p)`` with ``p`` the class
prior (uniform here, so ``Dir(alpha / 10, ..., alpha / 10)``), then takes its 500 training images
class by class from ``q``, dropping a class that runs out and renormalising (Hsu et al.'s
convention).  Some public code draws ``Dir(alpha * 1)`` instead, which for 10 classes is ten times
less skewed: ``alpha_here = 10 * alpha_there``.  The default ``alpha = 1.0`` gives
``Dir(0.1, ..., 0.1)``: most shards are dominated by one to three classes, the strongly skewed
regime in which the EM paper's local accuracy far exceeds its global accuracy.  Each shard also
draws its own test set from the test images with the class proportions of its own training
images (shards may share test images); global accuracy is measured on the union of the shard
test sets.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from emfl.nn.data import (
    DataError,
    FederatedData,
    atomic_save,
    cache_dir,
    channel_stats,
    resolve_data_dir,
    sample_with_proportions,
)

__all__ = [
    "CLASSES",
    "TARBALL",
    "load_cifar10_arrays",
    "dirichlet_split",
    "load_cifar10",
    "make_tiny_cifar10",
]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TARBALL = "cifar10_jpeg_imagefolder.tar.gz"


# Bumped whenever a cache made by an earlier version may be wrong: version 1 caches could hold an
# incompletely unpacked test set when two runs unpacked the tarball at the same time.
CACHE_VERSION = 2


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _read_image_folder(root: Path) -> dict:
    from PIL import Image

    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            if not folder.is_dir():
                raise DataError(f"the CIFAR-10 image folder {root} has no {split}/{name}/: expected "
                                f"train/<class>/*.jpg and test/<class>/*.jpg for the classes {', '.join(CLASSES)}")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            for f in files:
                try:
                    with Image.open(f) as im:
                        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
                except OSError as err:
                    raise DataError(f"cannot decode the image {f} ({err}); the copy is corrupt: replace it") from None
                if arr.shape != (32, 32, 3):
                    raise DataError(f"{f} is {arr.shape[1]}x{arr.shape[0]}, CIFAR-10 images are 32x32")
                xs.append(arr)
                ys.append(label)
        if not xs:
            raise DataError(f"the CIFAR-10 image folder {root / split} holds no images")
        out[f"{split}_x"] = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_y"] = torch.tensor(ys, dtype=torch.int64)
    return out


def _unpack_tarball(tarball: Path) -> Path:
    """Unpack the JPEG tarball into the cache folder once; returns the image-folder root.

    Each process unpacks into its own temporary folder and renames it into place, so that two
    runs started at the same time on a fresh machine do not trip over each other."""
    import shutil
    import tempfile

    dest = cache_dir() / f"cifar10-jpeg-v{CACHE_VERSION}-{_key(tarball)}"
    done = dest / ".complete"
    if done.exists():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".partial-", dir=cache_dir()))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").touch()
        if dest.exists() and not done.exists():  # left half-made by an interrupted older version
            shutil.rmtree(dest, ignore_errors=True)
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first: use its copy
            if not done.exists():
                raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise DataError(f"the CIFAR-10 archive {tarball} is corrupt or truncated ({err}): copy it again") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _read_torchvision(root: Path, download: bool) -> dict:
    from torchvision.datasets import CIFAR10

    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = CIFAR10(str(root), train=train, download=download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise DataError(
                f"no usable CIFAR-10 in {root} ({err}). Give a folder holding {TARBALL}, an image "
                "folder (train/<class>, test/<class>) or cifar-10-batches-py/, or add --download "
                "to fetch the official archive (md5-checked) on a machine with internet"
            ) from None
        out[f"{split}_x"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_y"] = torch.tensor(ds.targets, dtype=torch.int64)
    return out


def load_cifar10_arrays(data_dir=None, download: bool = False) -> dict:
    """All 60,000 images as uint8 tensors (N, 3, 32, 32) with labels, decoded once and cached.

    Returns ``dict(train_x, train_y, test_x, test_y, source)``."""
    root = resolve_data_dir(data_dir)
    if (root / TARBALL).is_file():
        source = root / TARBALL
        reader = lambda: _read_image_folder(_unpack_tarball(source))  # noqa: E731
    else:
        for cand in (root, root / "cifar10"):
            if (cand / "train").is_dir() and (cand / "test").is_dir():
                source = cand
                reader = lambda: _read_image_folder(source)  # noqa: E731
                break
        else:
            source = root / "cifar-10-batches-py"
            reader = lambda: _read_torchvision(root, download)  # noqa: E731
    key = _key(source) if source.exists() else "download"
    cached = cache_dir() / f"cifar10-v{CACHE_VERSION}-{key}.pt"
    if cached.exists() and key != "download":
        try:
            arrays = torch.load(cached, weights_only=True)
            arrays["source"] = str(source)
            return arrays
        except Exception:  # a damaged cache file is rebuilt below
            cached.unlink(missing_ok=True)
    arrays = reader()
    if source.exists():
        atomic_save(arrays, cache_dir() / f"cifar10-v{CACHE_VERSION}-{_key(source)}.pt")
    arrays["source"] = str(source)
    return arrays


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Whole counts proportional to ``shares`` that add up to ``total`` exactly."""
    raw = shares / shares.sum() * total
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


def dirichlet_split(train_y, test_y, num_shards: int = 100, shard_size: int = 500,
                    test_size: int | None = None, alpha: float = 1.0, seed: int = 0,
                    num_classes: int = 10, test_split: str = "matched"):
    """Hsu et al.'s non-i.i.d. split: ``q_s ~ Dir(alpha * p)``, then class-by-class draws.

    Training shards are disjoint.  Each shard's test set (``test_size`` images, default an equal
    share of the test set) has the class proportions of the shard's own training images, drawn
    without replacement within the shard and independently across shards (so two shards may share
    a test image).  Returns ``(train_idx, test_idx, q)`` with ``q`` the (num_shards, num_classes)
    drawn proportions.

    ``test_split="disjoint"`` is the earlier scheme: each shard's test set is drawn class by class
    from ``q_s`` out of pools shared by all shards (disjoint test sets that together cover the test
    set when sizes add up; late shards get what is left, so their test classes can differ from
    their training classes)."""
    if test_split not in ("matched", "disjoint"):
        raise ValueError(f"test_split must be 'matched' or 'disjoint'; got {test_split!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (smaller is more skewed); got {alpha}")
    train_y = np.asarray(train_y)
    test_y = np.asarray(test_y)
    if num_shards < 1 or shard_size < 1:
        raise ValueError("num_shards and shard_size must be >= 1")
    if num_shards * shard_size > len(train_y):
        raise ValueError(f"{num_shards} shards of {shard_size} need {num_shards * shard_size} training "
                         f"images; there are {len(train_y)}")
    test_size = max(1, len(test_y) // num_shards) if test_size is None else test_size
    rng = np.random.default_rng(seed)
    prior = np.bincount(train_y, minlength=num_classes) / len(train_y)
    train_pools = [list(rng.permutation(np.flatnonzero(train_y == k))) for k in range(num_classes)]
    test_by_class = [np.flatnonzero(test_y == k) for k in range(num_classes)]
    if test_split == "disjoint":
        test_pools = [list(rng.permutation(np.flatnonzero(test_y == k))) for k in range(num_classes)]
    q = rng.dirichlet(alpha * prior, size=num_shards)
    train_idx, test_idx = [], []
    for s in range(num_shards):
        tr = np.sort(sample_with_proportions(train_pools, q[s], shard_size, rng))
        if test_split == "disjoint":
            train_idx.append(tr)
            test_idx.append(np.sort(sample_with_proportions(test_pools, q[s], test_size, rng)))
            continue
        counts = _largest_remainder(np.bincount(train_y[tr], minlength=num_classes).astype(float), test_size)
        te = [rng.choice(test_by_class[k], size=min(c, len(test_by_class[k])), replace=False)
              for k, c in enumerate(counts) if c > 0]
        train_idx.append(tr)
        test_idx.append(np.sort(np.concatenate(te)))
    return train_idx, test_idx, q


def load_cifar10(data_dir=None, seed: int = 0, alpha: float = 1.0, num_shards: int = 100,
                 shard_size: int = 500, test_size: int | None = None, download: bool = False,
                 test_split: str = "matched") -> FederatedData:
    """CIFAR-10 split into ``num_shards`` shards (default: the paper's 100 x 500, with 100 test
    images each)."""
    arrays = load_cifar10_arrays(data_dir, download)
    tr, te, q = dirichlet_split(arrays["train_y"], arrays["test_y"], num_shards, shard_size,
                                test_size, alpha, seed, test_split=test_split)
    x = arrays["train_x"]
    mean, std = channel_stats(x[torch.from_numpy(np.concatenate(tr))])
    union = torch.from_numpy(np.unique(np.concatenate(te)))
    return FederatedData(
        name="cifar10", num_classes=10,
        train_x=[x[torch.from_numpy(i)] for i in tr], train_y=[arrays["train_y"][torch.from_numpy(i)] for i in tr],
        test_x=[arrays["test_x"][torch.from_numpy(i)] for i in te], test_y=[arrays["test_y"][torch.from_numpy(i)] for i in te],
        mean=mean, std=std,
        global_x=arrays["test_x"][union] if test_split == "matched" else None,
        global_y=arrays["test_y"][union] if test_split == "matched" else None,
        info={"source": arrays["source"], "split": "Hsu et al.: q ~ Dir(alpha * p), class-by-class draws",
              "alpha": alpha, "seed": seed, "test_split": test_split, "num_shards": num_shards, "shard_size": shard_size,
              "test_size": len(te[0]), "q": q.round(4).tolist()},
    )


def make_tiny_cifar10(folder, per_class: int = 12, test_per_class: int = 4, seed: int = 0, fmt: str = "imagefolder") -> dict:
    """A small generated CIFAR-10 look-alike for tests, in one of the formats the loader reads.

    ``fmt``: ``"imagefolder"`` (``train/<class>/*.png``, lossless so the pixels round-trip),
    ``"tarball"`` (that folder packed as ``cifar10_jpeg_imagefolder.tar.gz``) or ``"python"``
    (``cifar-10-batches-py/`` pickles as the official archive has them).  Each class's images are
    noise around a class-specific colour, so a small model can learn them.  Returns the arrays."""
    from PIL import Image

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(10, 3))

    def images(n, k):
        base = np.broadcast_to(colours[k], (n, 32, 32, 3))
        return np.clip(base + rng.normal(0, 25, size=(n, 32, 32, 3)), 0, 255).astype(np.uint8)

    data = {}
    for split, n in (("train", per_class), ("test", test_per_class)):
        xs = [images(n, k) for k in range(10)]
        data[f"{split}_x"] = np.concatenate(xs)
        data[f"{split}_y"] = np.repeat(np.arange(10), n)
    if fmt in ("imagefolder", "tarball"):
        root = folder / "imagefolder" if fmt == "tarball" else folder
        for split in ("train", "test"):
            for i, (img, k) in enumerate(zip(data[f"{split}_x"], data[f"{split}_y"])):
                d = root / split / CLASSES[k]
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(d / f"{i:05d}.png")
        if fmt == "tarball":
            with tarfile.open(folder / TARBALL, "w:gz") as tar:
                tar.add(root / "train", arcname="train")
                tar.add(root / "test", arcname="test")
            import shutil

            shutil.rmtree(root)
    elif fmt == "python":
        base = folder / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        tx, ty = data["train_x"], data["train_y"]
        parts = np.array_split(np.arange(len(ty)), 5)
        for b, idx in enumerate(parts, start=1):
            _write_batch(base / f"data_batch_{b}", tx[idx], ty[idx])
        _write_batch(base / "test_batch", data["test_x"], data["test_y"])
        with open(base / "batches.meta", "wb") as f:
            pickle.dump({"label_names": list(CLASSES)}, f)
    else:
        raise ValueError(f"fmt must be 'imagefolder', 'tarball' or 'python'; got {fmt!r}")
    return data


def _write_batch(path, x, y):
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    with open(path, "wb") as f:
        pickle.dump({"data": flat, "labels": [int(v) for v in y]}, f)
