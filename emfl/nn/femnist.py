"""FEMNIST (LEAF benchmark) as :class:`~emfl.nn.data.FederatedData`: one client per writer.

The data comes either as the compact npz ``femnist_leaf_by_writer.npz`` (keys ``x`` uint8
[N, 28, 28] with 255 = white background, ``y`` uint8 [N] labels 0-61, ``writers`` str [W]
sorted, ``counts`` int64 [W]; writer i owns rows ``sum(counts[:i])`` to ``sum(counts[:i+1])``)
or as the json files LEAF's preprocessing writes, which :func:`json_to_npz` turns into that npz.

Each writer's samples are split into train and test the way LEAF does it (:func:`writer_split`):
``n_train = max(1, floor(0.9 n))`` chosen at random, the rest test.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .data import DataError, FederatedData, atomic_save, cache_dir, resolve_data_dir

__all__ = [
    "NPZ_NAME",
    "NUM_CLASSES",
    "read_leaf_json",
    "json_to_npz",
    "load_npz",
    "writer_split",
    "load_femnist",
    "make_tiny_femnist",
]

NPZ_NAME = "femnist_leaf_by_writer.npz"
NUM_CLASSES = 62
SIDE = 28
KEYS = ("x", "y", "writers", "counts")
TRAIN_FRAC = 0.9
SPLIT_NOTE = "LEAF per-writer, n_train = max(1, floor(0.9 n))"

_EXPECTED = {
    "x": "uint8 [N, 28, 28]",
    "y": "uint8 [N], labels 0-61",
    "writers": "str [W], sorted",
    "counts": "int64 [W], each >= 1, summing to N",
}
_LEAF_FORMAT = (
    'LEAF json: {"users": [...], "num_samples": [...], "user_data": '
    '{user: {"x": [[784 floats in 0..1], ...], "y": [ints 0-61]}}}'
)
_JSON_LAYOUTS = ("femnist/data", "data", ".")  # folders that may hold all_data/ or train/ + test/


# ---------------------------------------------------------------- checks


def _check_arrays(a: dict, source) -> None:
    """Raise DataError naming the first problem with the four FEMNIST arrays."""
    missing = [k for k in KEYS if k not in a]
    if missing:
        raise DataError(f"{source}: missing key(s) {', '.join(missing)}; expected x, y, writers, counts")
    x, y, writers, counts = (a[k] for k in KEYS)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{source}: x is {x.dtype} {list(x.shape)}; expected {_EXPECTED['x']}")
    if y.dtype != np.uint8 or y.shape != (len(x),):
        raise DataError(f"{source}: y is {y.dtype} {list(y.shape)}; expected uint8 [{len(x)}] (one label per image)")
    if counts.dtype != np.int64 or counts.ndim != 1 or len(counts) == 0:
        raise DataError(f"{source}: counts is {counts.dtype} {list(counts.shape)}; expected {_EXPECTED['counts']}")
    if writers.dtype.kind != "U" or writers.shape != counts.shape:
        raise DataError(
            f"{source}: writers is {writers.dtype} {list(writers.shape)}; "
            f"expected str [{len(counts)}] (one id per count)"
        )
    if counts.min() < 1:
        raise DataError(f"{source}: counts holds {counts.min()}; every writer needs at least one sample")
    if int(counts.sum()) != len(x):
        raise DataError(f"{source}: counts sum to {int(counts.sum())} but x holds {len(x)} images; they must agree")
    if len(y) and int(y.max()) >= NUM_CLASSES:
        raise DataError(f"{source}: label {int(y.max())} in y; FEMNIST labels are 0-{NUM_CLASSES - 1}")
    if len(writers) > 1 and not np.all(writers[1:] > writers[:-1]):
        raise DataError(f"{source}: writers are not sorted and unique")


# ---------------------------------------------------------------- LEAF json


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _json_files(folder: Path) -> list:
    return sorted(folder.glob("*.json"), key=_natural_key) if folder.is_dir() else []


def _leaf_json_groups(folder: Path) -> list:
    """The json files of a LEAF folder as groups read in order (train before test)."""
    all_data = _json_files(folder / "all_data")
    if all_data:
        return [all_data]
    train, test = _json_files(folder / "train"), _json_files(folder / "test")
    if train and test:
        return [train, test]
    if train or test:
        have, lack = ("train", "test") if train else ("test", "train")
        raise DataError(f"{folder} has {have}/*.json but no {lack}/*.json; LEAF's split writes both")
    direct = _json_files(folder)
    if direct:
        return [direct]
    raise DataError(
        f"no LEAF json files in {folder}: looked for all_data/*.json, train/*.json with test/*.json, "
        f"and *.json in the folder itself"
    )


def _bad_json(path, what: str) -> DataError:
    return DataError(f"{path} is not valid LEAF json ({what}); expected {_LEAF_FORMAT}")


def _user_arrays(path, user, d) -> tuple:
    """One user's LEAF samples as (uint8 [n, 28, 28], uint8 [n])."""
    if not isinstance(d, dict) or "x" not in d or "y" not in d:
        raise _bad_json(path, f"user_data[{user!r}] lacks x or y")
    try:
        n = len(d["x"])
        xs = np.asarray(d["x"], dtype=np.float64).reshape(n, -1) if n else np.zeros((0, SIDE * SIDE))
        ys = np.asarray(d["y"])
    except (ValueError, TypeError) as e:
        raise _bad_json(path, f"user {user!r}: x or y is not numeric ({e})") from None
    if xs.shape[1:] != (SIDE * SIDE,) and len(xs):
        raise _bad_json(path, f"user {user!r}: images have {xs.shape[1]} values, not {SIDE * SIDE}")
    if ys.shape != (len(xs),) or (len(ys) and ys.dtype.kind not in "iu"):
        raise _bad_json(path, f"user {user!r}: y must be {len(xs)} integers, one per image")
    if len(xs) and not (np.isfinite(xs).all() and xs.min() >= 0.0 and xs.max() <= 1.0):
        raise _bad_json(path, f"user {user!r}: pixel values outside 0..1")
    if len(ys) and (ys.min() < 0 or ys.max() >= NUM_CLASSES):
        raise _bad_json(path, f"user {user!r}: label outside 0-{NUM_CLASSES - 1}")
    x8 = np.rint(xs * 255.0).astype(np.uint8).reshape(len(xs), SIDE, SIDE)
    return x8, ys.astype(np.uint8)


def _read_leaf_file(path: Path) -> dict:
    """{user: (x uint8, y uint8)} from one LEAF json file."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad_json(path, f"cannot parse: {e}") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("users"), list) and isinstance(obj.get("user_data"), dict)):
        raise _bad_json(path, 'needs a "users" list and a "user_data" object')
    num = obj.get("num_samples")
    if num is not None and (not isinstance(num, list) or len(num) != len(obj["users"])):
        raise _bad_json(path, '"num_samples" must have one entry per user')
    out = {}
    for i, user in enumerate(obj["users"]):
        if not isinstance(user, str):
            raise _bad_json(path, f"user id {user!r} is not a string")
        x8, y8 = _user_arrays(path, user, obj["user_data"].get(user))
        if num is not None and num[i] != len(y8):
            raise _bad_json(path, f"num_samples says {num[i]} for user {user!r} but it has {len(y8)}")
        out[str(user)] = (x8, y8)
    return out


def read_leaf_json(folder) -> dict:
    """Read LEAF's FEMNIST json into the npz arrays ``dict(x, y, writers, counts)``.

    ``folder`` holds ``all_data/*.json``, or ``train/*.json`` and ``test/*.json`` (each writer's
    train samples then its test samples), or json files directly.  Pixels become
    ``round(x * 255)`` as uint8; writers are sorted, each writer's samples kept in file order."""
    folder = Path(folder)
    per_user: dict = {}
    for group in _leaf_json_groups(folder):
        for path in group:
            for user, xy in _read_leaf_file(path).items():
                per_user.setdefault(user, []).append(xy)
    writers = sorted(u for u, parts in per_user.items() if sum(len(p[1]) for p in parts) > 0)
    if not writers:
        raise DataError(f"the LEAF json files in {folder} hold no samples")
    parts = [p for w in writers for p in per_user[w]]
    return {
        "x": np.concatenate([p[0] for p in parts]),
        "y": np.concatenate([p[1] for p in parts]),
        "writers": np.array(writers, dtype=str),
        "counts": np.array([sum(len(p[1]) for p in per_user[w]) for w in writers], dtype=np.int64),
    }


def _atomic_savez(path: Path, arrays: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **{k: arrays[k] for k in KEYS})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def json_to_npz(leaf_folder, out_path) -> Path:
    """Convert LEAF json (see :func:`read_leaf_json`) to the compact npz, written atomically."""
    arrays = read_leaf_json(leaf_folder)
    _check_arrays(arrays, leaf_folder)
    return _atomic_savez(Path(out_path), arrays)


# ---------------------------------------------------------------- npz and its cache


def _read_member(zf: zipfile.ZipFile, name: str, chunk: int = 1 << 24) -> np.ndarray:
    """One ``.npy`` member, read in large chunks (np.load's small reads are ~3x slower here)."""
    with zf.open(name) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version} in {name}")
        if dtype.hasobject:
            raise ValueError(f"{name} holds pickled Python objects")
        a = np.empty(shape, dtype, order="F" if fortran else "C")
        raw = (a.T if fortran else a).reshape(-1).view(np.uint8)
        view, off = memoryview(raw), 0
        while off < len(raw):
            got = f.readinto(view[off : off + chunk])
            if not got:
                raise EOFError(f"{name} ends after {off} of {len(raw)} bytes")
            off += got
    return a


def _read_npz(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = [k for k in KEYS if f"{k}.npy" not in names]
            if missing:
                raise DataError(f"{path}: missing key(s) {', '.join(missing)}; expected x, y, writers, counts")
            return {k: _read_member(zf, f"{k}.npy") for k in KEYS}
    except PermissionError as e:
        raise DataError(f"cannot read {path} ({e}); check its permissions") from e
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path} is corrupt or unreadable ({type(e).__name__}: {e}); delete it and re-create it "
            f"with emfl.nn.femnist.json_to_npz or copy it again"
        ) from e


def _cache_path(path: Path) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return cache_dir() / f"femnist_{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def _load_cache(cache: Path):
    """The arrays from a cache file, or None if it is absent or unusable in any way."""
    if not cache.is_file():
        return None
    try:
        obj = torch.load(cache, mmap=True, weights_only=True)
        arrays = {
            "x": obj["x"].numpy(),
            "y": obj["y"].numpy(),
            "writers": np.array(obj["writers"], dtype=str),
            "counts": obj["counts"].numpy(),
        }
        _check_arrays(arrays, cache)
        return arrays
    except Exception:  # a broken cache is only a slower start: ignore it and rewrite it
        return None


def _save_cache(cache: Path, a: dict) -> None:
    obj = {
        "x": torch.from_numpy(a["x"]),
        "y": torch.from_numpy(a["y"]),
        "writers": [str(w) for w in a["writers"]],
        "counts": torch.from_numpy(a["counts"]),
    }
    try:
        atomic_save(obj, cache)
    except OSError as e:
        warnings.warn(f"could not write the FEMNIST cache {cache} ({e}); the next start decodes the npz again")


def load_npz(path) -> dict:
    """The checked arrays ``dict(x, y, writers, counts)`` of a FEMNIST npz.

    The decoded arrays are cached as a torch file in :func:`cache_dir`, keyed by the npz's
    absolute path, size and modification time; a cache file that fails to load is rewritten.
    ``x`` may be memory-mapped from that cache (copy-on-write)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"the FEMNIST file {path} does not exist; copy {NPZ_NAME} there (e.g. from ../shared/data) "
            f"or make it from LEAF's json with emfl.nn.femnist.json_to_npz(leaf_folder, '{path}')"
        )
    cache = _cache_path(path)
    arrays = _load_cache(cache)
    if arrays is None:
        arrays = _read_npz(path)
        _check_arrays(arrays, path)
        _save_cache(cache, arrays)
    return arrays


# ---------------------------------------------------------------- split and FederatedData


def writer_split(counts, seed: int, frac: float = TRAIN_FRAC) -> tuple:
    """LEAF's per-writer split: ``n_train = max(1, floor(frac * n))`` random rows, the rest test.

    One permutation per writer, in writer order, from ``np.random.default_rng(seed)``, so the
    split of the first k writers does not depend on the others.  Returns two lists (one entry per
    writer) of sorted global row indices."""
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    counts = np.asarray(counts, dtype=np.int64)
    rng = np.random.default_rng(seed)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    train, test = [], []
    for start, n in zip(starts, counts):
        if n < 1:
            raise ValueError("every writer needs at least one sample")
        k = max(1, math.floor(frac * n))
        perm = rng.permutation(n)
        train.append(np.sort(perm[:k]) + start)
        test.append(np.sort(perm[k:]) + start)
    return train, test


def _pixel_mean_std(images: list) -> tuple:
    """Mean and standard deviation of ``x / 255`` over all pixels, one client at a time.

    Sums of pixels and of squared pixels are exact integers (255^2 fits in uint16), so no float
    copy of the data is made; numpy keeps it single-threaded, which stays fast on a busy machine."""
    n = total = square = 0
    for t in images:
        v = t.numpy().reshape(-1)
        total += int(v.sum(dtype=np.uint64))
        v2 = v.astype(np.uint16)
        v2 *= v2
        square += int(v2.sum(dtype=np.uint64))
        n += v.size
    mean = total / (255.0 * n)
    var = (square * n - total * total) / (255.0 * n) ** 2  # exact integer numerator
    return mean, math.sqrt(var)


def _find_leaf_folder(root: Path):
    for sub in _JSON_LAYOUTS:
        base = root / sub
        if _json_files(base / "all_data") or (_json_files(base / "train") and _json_files(base / "test")):
            return base
    return None


def _converted_npz(leaf: Path) -> Path:
    """Where the npz made from a LEAF json folder lives in the cache (keyed by folder and files)."""
    files = [p for group in _leaf_json_groups(leaf) for p in group]
    key = "|".join([str(leaf.resolve())] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files])
    return cache_dir() / f"femnist_json_{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _locate(root: Path) -> tuple:
    """(npz to load, source it came from, whether the npz was converted from json)."""
    direct = root / NPZ_NAME
    if direct.is_file():
        return direct, direct, False
    leaf = _find_leaf_folder(root)
    if leaf is None:
        looked = [NPZ_NAME] + [
            f"{p}all_data/*.json, {p}train/*.json with {p}test/*.json" for p in ("femnist/data/", "data/", "")
        ]
        raise DataError(
            f"no FEMNIST data in {root}: looked for {'; '.join(looked)}. Copy {NPZ_NAME} there "
            f"(e.g. from ../shared/data) or put LEAF's json output (its femnist/data folder) there"
        )
    npz = _converted_npz(leaf)
    if not npz.is_file():
        json_to_npz(leaf, npz)
    return npz, leaf, True


def load_femnist(data_dir=None, seed: int = 0, max_writers: int | None = None) -> FederatedData:
    """FEMNIST with one client per writer, split by :func:`writer_split`.

    Images are uint8 (n, 1, 28, 28), labels int64; ``mean``/``std`` are those of the kept
    writers' training images (x / 255).  ``max_writers`` keeps the first k writers."""
    if max_writers is not None and max_writers < 1:
        raise ValueError(f"max_writers must be at least 1, got {max_writers}")
    npz, source, converted = _locate(resolve_data_dir(data_dir))
    try:
        arrays = load_npz(npz)
    except DataError:
        if not converted:
            raise
        arrays = load_npz(json_to_npz(source, npz))  # our own conversion went bad: redo it
    counts = arrays["counts"][:max_writers]
    x, y = arrays["x"], arrays["y"]
    train_idx, test_idx = writer_split(counts, seed)

    def images(idx):
        return torch.from_numpy(x[idx]).unsqueeze(1)

    def labels(idx):
        return torch.from_numpy(y[idx].astype(np.int64))

    train_x = [images(i) for i in train_idx]
    mean, std = _pixel_mean_std(train_x)
    info = {
        "source": str(source),
        "writers": len(counts),
        "samples": int(counts.sum()),
        "split": SPLIT_NOTE,
        "seed": seed,
    }
    if converted:
        info["npz"] = str(npz)
    return FederatedData(
        name="femnist",
        num_classes=NUM_CLASSES,
        train_x=train_x,
        train_y=[labels(i) for i in train_idx],
        test_x=[images(i) for i in test_idx],
        test_y=[labels(i) for i in test_idx],
        mean=(mean,),
        std=(std,),
        info=info,
    )


# ---------------------------------------------------------------- generated data for tests


def _leaf_json(arrays: dict, rows_of, order) -> dict:
    """LEAF json holding, for each writer index in ``order``, the rows ``rows_of(i)``."""
    users, num, data = [], [], {}
    for i in order:
        rows = rows_of(i)
        name = str(arrays["writers"][i])
        users.append(name)
        num.append(len(rows))
        data[name] = {
            "x": (arrays["x"][rows].reshape(len(rows), -1) / 255.0).tolist(),
            "y": arrays["y"][rows].astype(int).tolist(),
        }
    return {"users": users, "num_samples": num, "user_data": data}


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_tiny_femnist(folder, writers: int = 5, seed: int = 0, fmt: str = "npz") -> dict:
    """Write a small random FEMNIST-like data set into ``folder``; return its arrays.

    Writers own 3 to 30 random 28x28 uint8 images with labels 0-61.  ``fmt``: ``"npz"`` ->
    ``folder/femnist_leaf_by_writer.npz``; ``"json"`` -> LEAF json ``folder/all_data/all_data_0.json``;
    ``"json-split"`` -> LEAF json ``folder/train/train_0.json`` (each writer's first
    ``max(1, floor(0.9 n))`` rows) and ``folder/test/test_0.json`` (the rest).  Json pixels are
    ``x / 255`` and users are listed in reverse order, so reading them back must sort."""
    if fmt not in ("npz", "json", "json-split"):
        raise ValueError(f"fmt must be 'npz', 'json' or 'json-split', got {fmt!r}")
    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 31, size=writers).astype(np.int64)
    n = int(counts.sum())
    arrays = {
        "x": rng.integers(0, 256, size=(n, SIDE, SIDE), dtype=np.uint8),
        "y": rng.integers(0, NUM_CLASSES, size=n, dtype=np.uint8),
        "writers": np.array([f"f{i:04d}_{i % 100:02d}" for i in range(writers)], dtype=str),
        "counts": counts,
    }
    folder = Path(folder)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    order = range(writers - 1, -1, -1)
    if fmt == "npz":
        _atomic_savez(folder / NPZ_NAME, arrays)
    elif fmt == "json":
        obj = _leaf_json(arrays, lambda i: np.arange(starts[i], starts[i] + counts[i]), order)
        _write_json(folder / "all_data" / "all_data_0.json", obj)
    else:
        cut = [starts[i] + max(1, math.floor(TRAIN_FRAC * counts[i])) for i in range(writers)]
        train = _leaf_json(arrays, lambda i: np.arange(starts[i], cut[i]), order)
        test = _leaf_json(arrays, lambda i: np.arange(cut[i], starts[i] + counts[i]), order)
        _write_json(folder / "train" / "train_0.json", train)
        _write_json(folder / "test" / "test_0.json", test)
    return arrays
