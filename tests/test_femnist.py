"""FEMNIST loading: LEAF's per-writer split, json -> npz, checks and errors, the cache, real data."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emfl.nn import femnist
from emfl.nn.data import DataError
from emfl.nn.femnist import (
    NPZ_NAME,
    json_to_npz,
    load_femnist,
    load_npz,
    make_tiny_femnist,
    read_leaf_json,
    writer_split,
)

REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_NPZ = REAL_DIR / NPZ_NAME


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test writes its cache under tmp_path, never into the home folder."""
    path = tmp_path / "cache"
    monkeypatch.setenv("EMFL_CACHE_DIR", str(path))
    return path


def assert_same_arrays(got, want):
    assert set(got) == {"x", "y", "writers", "counts"}
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ---------------------------------------------------------------- writer_split


def test_writer_split_by_hand():
    # writers own rows [0], [1, 2], [3..12], [13..23]; n_train = max(1, floor(0.9 n))
    train, test = writer_split([1, 2, 10, 11], seed=0)
    assert [len(t) for t in train] == [1, 1, 9, 9]
    assert [len(t) for t in test] == [0, 1, 1, 2]
    assert train[0].tolist() == [0]
    rows = [range(0, 1), range(1, 3), range(3, 13), range(13, 24)]
    for tr, te, r in zip(train, test, rows):
        assert set(tr).isdisjoint(te)
        assert sorted(set(tr) | set(te)) == list(r)  # each writer keeps exactly its own rows
        assert tr.tolist() == sorted(tr) and te.tolist() == sorted(te)
    assert sorted(np.concatenate(train + test).tolist()) == list(range(24))


def test_writer_split_is_seeded():
    a, b, c = (writer_split([1, 2, 10, 11], seed=s) for s in (0, 0, 1))
    assert all(np.array_equal(u, v) for u, v in zip(a[0] + a[1], b[0] + b[1]))
    assert not all(np.array_equal(u, v) for u, v in zip(a[0] + a[1], c[0] + c[1]))


def test_writer_split_frac_and_prefix():
    train, test = writer_split([5], seed=0, frac=0.5)  # floor(2.5) = 2
    assert (len(train[0]), len(test[0])) == (2, 3)
    # one permutation per writer in writer order: the first writers' split ignores later ones
    long, _ = writer_split([4, 7, 9], seed=3)
    short, _ = writer_split([4, 7], seed=3)
    assert all(np.array_equal(u, v) for u, v in zip(short, long))
    with pytest.raises(ValueError):
        writer_split([3, 0], seed=0)


# ---------------------------------------------------------------- LEAF json


@pytest.mark.parametrize("fmt", ["json", "json-split"])
def test_json_round_trip_is_exact(tmp_path, fmt):
    want = make_tiny_femnist(tmp_path / "leaf", writers=4, seed=1, fmt=fmt)
    assert_same_arrays(read_leaf_json(tmp_path / "leaf"), want)
    out = json_to_npz(tmp_path / "leaf", tmp_path / "out" / "f.npz")
    assert out == tmp_path / "out" / "f.npz"
    assert [p.name for p in out.parent.iterdir()] == ["f.npz"]  # no temporary file left behind
    with np.load(out) as z:
        assert_same_arrays({k: z[k] for k in z.files}, want)


def test_tiny_split_json_really_has_train_and_test(tmp_path):
    make_tiny_femnist(tmp_path, writers=2, seed=0, fmt="json-split")
    train = json.loads(next((tmp_path / "train").glob("*.json")).read_text())
    test = json.loads(next((tmp_path / "test").glob("*.json")).read_text())
    assert train["users"] == test["users"] == ["f0001_01", "f0000_00"]  # reversed: reading must sort
    n = [a + b for a, b in zip(train["num_samples"], test["num_samples"])]
    assert train["num_samples"] == [max(1, int(0.9 * k)) for k in n]


def test_read_leaf_json_by_hand(tmp_path):
    # two writers listed unsorted, json files directly in the folder; 0.5 * 255 = 127.5 rounds to 128
    obj = {
        "users": ["b", "a"],
        "num_samples": [1, 2],
        "user_data": {
            "b": {"x": [[1.0] * 784], "y": [61]},
            "a": {"x": [[0.0] * 784, [0.5] * 784], "y": [3, 0]},
        },
    }
    (tmp_path / "part.json").write_text(json.dumps(obj))
    got = read_leaf_json(tmp_path)
    assert got["writers"].tolist() == ["a", "b"]
    assert got["counts"].tolist() == [2, 1]
    assert got["y"].tolist() == [3, 0, 61]
    assert got["x"].shape == (3, 28, 28) and got["x"].dtype == np.uint8
    assert [int(got["x"][i, 5, 7]) for i in range(3)] == [0, 128, 255]


def test_train_and_test_are_merged_train_first(tmp_path):
    def write(sub, xs, ys):
        obj = {"users": ["w"], "num_samples": [len(ys)], "user_data": {"w": {"x": xs, "y": ys}}}
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{sub}.json").write_text(json.dumps(obj))

    write("train", [[0.0] * 784, [0.0] * 784], [1, 2])
    write("test", [[1.0] * 784], [9])
    got = read_leaf_json(tmp_path)
    assert got["y"].tolist() == [1, 2, 9] and got["counts"].tolist() == [3]
    assert got["x"][:, 0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    "text, says",
    [
        ("{not json", "cannot parse"),
        (json.dumps({"foo": 1}), '"users"'),
        (json.dumps({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 10], "y": [1]}}}), "10 values"),
        (json.dumps({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 784], "y": [62]}}}), "label"),
        (json.dumps({"users": ["a"], "user_data": {"a": {"x": [[2.0] * 784], "y": [1]}}}), "0..1"),
        (
            json.dumps({"users": ["a"], "num_samples": [5], "user_data": {"a": {"x": [[0.0] * 784], "y": [1]}}}),
            "num_samples",
        ),
    ],
)
def test_invalid_json_names_the_file(tmp_path, text, says):
    (tmp_path / "all_data").mkdir()
    bad = tmp_path / "all_data" / "bad.json"
    bad.write_text(text)
    with pytest.raises(DataError, match="not valid LEAF json") as e:
        read_leaf_json(tmp_path)
    assert str(bad) in str(e.value) and says in str(e.value) and '"user_data"' in str(e.value)


def test_no_json_or_half_a_split(tmp_path):
    with pytest.raises(DataError, match="no LEAF json files"):
        read_leaf_json(tmp_path)
    make_tiny_femnist(tmp_path, writers=2, fmt="json-split")
    for p in (tmp_path / "test").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="no test/"):
        read_leaf_json(tmp_path)


# ---------------------------------------------------------------- load_femnist


def check_federated(data, arrays, seed=0):
    """Every client holds exactly its writer's rows, split by writer_split."""
    k = data.num_clients
    train_idx, test_idx = writer_split(arrays["counts"][:k], seed)
    for s in range(k):
        for xs, ys, idx in ((data.train_x[s], data.train_y[s], train_idx[s]), (data.test_x[s], data.test_y[s], test_idx[s])):
            assert xs.dtype == torch.uint8 and xs.shape == (len(idx), 1, 28, 28)
            assert ys.dtype == torch.int64
            np.testing.assert_array_equal(xs[:, 0].numpy(), arrays["x"][idx])
            np.testing.assert_array_equal(ys.numpy(), arrays["y"][idx])
    pixels = np.concatenate([t.numpy().ravel() for t in data.train_x]) / 255.0
    assert data.mean[0] == pytest.approx(pixels.mean(), abs=1e-12)
    assert data.std[0] == pytest.approx(pixels.std(), abs=1e-12)


def test_load_femnist_from_npz(tmp_path):
    arrays = make_tiny_femnist(tmp_path, writers=5, seed=2)
    data = load_femnist(tmp_path, seed=4)
    assert data.name == "femnist" and data.num_classes == 62 and data.num_clients == 5
    assert data.input_shape == (1, 28, 28)
    n = arrays["counts"]
    assert data.train_sizes().tolist() == [max(1, int(0.9 * k)) for k in n]
    assert (data.train_sizes() + data.test_sizes()).tolist() == n.tolist()
    assert len(data.mean) == len(data.std) == 1 and 0.3 < data.mean[0] < 0.7  # uniform pixels: about 0.5
    check_federated(data, arrays, seed=4)
    assert data.info == {
        "source": str(tmp_path / NPZ_NAME),
        "writers": 5,
        "samples": int(n.sum()),
        "split": "LEAF per-writer, n_train = max(1, floor(0.9 n))",
        "seed": 4,
    }


def test_max_writers_keeps_the_first_ones(tmp_path):
    arrays = make_tiny_femnist(tmp_path, writers=5, seed=2)
    full, part = load_femnist(tmp_path), load_femnist(tmp_path, max_writers=2)
    assert part.num_clients == 2 and part.info["samples"] == int(arrays["counts"][:2].sum())
    for s in range(2):
        assert torch.equal(part.train_x[s], full.train_x[s]) and torch.equal(part.test_y[s], full.test_y[s])
    check_federated(part, arrays)
    assert load_femnist(tmp_path, max_writers=99).num_clients == 5


@pytest.mark.parametrize(
    "sub, fmt",  # json -> SUB/all_data/*.json; json-split -> SUB/train/*.json and SUB/test/*.json
    [("", "json"), ("femnist/data", "json"), ("femnist/data", "json-split"), ("data", "json"), ("", "json-split")],
)
def test_load_femnist_from_json(tmp_path, cache, sub, fmt):
    root = tmp_path / "root"
    leaf = root / sub
    arrays = make_tiny_femnist(leaf, writers=3, seed=5, fmt=fmt)
    data = load_femnist(root)
    assert data.num_clients == 3 and data.info["source"] == str(leaf)
    check_federated(data, arrays)
    converted = list(cache.glob("femnist_json_*.npz"))
    assert [str(p) for p in converted] == [data.info["npz"]]
    # converted once: a second load reads the same npz without converting again
    mtime = converted[0].stat().st_mtime_ns
    assert torch.equal(load_femnist(root).train_x[2], data.train_x[2])
    assert converted[0].stat().st_mtime_ns == mtime


def test_npz_beats_json_in_the_same_folder(tmp_path):
    make_tiny_femnist(tmp_path, writers=2, fmt="json")
    arrays = make_tiny_femnist(tmp_path, writers=4, seed=9)
    assert load_femnist(tmp_path).num_clients == 4
    check_federated(load_femnist(tmp_path), arrays)


def test_a_broken_converted_npz_is_made_again(tmp_path, cache):
    arrays = make_tiny_femnist(tmp_path, writers=2, fmt="json")
    load_femnist(tmp_path)
    (converted,) = cache.glob("femnist_json_*.npz")
    converted.write_bytes(b"garbage")
    check_federated(load_femnist(tmp_path), arrays)


# ---------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_femnist(tmp_path / "nope")


def test_folder_without_femnist(tmp_path):
    (tmp_path / "train").mkdir()  # a train folder alone is not LEAF data
    with pytest.raises(DataError, match="no FEMNIST data") as e:
        load_femnist(tmp_path)
    for looked in (NPZ_NAME, "femnist/data/all_data/*.json", "train/*.json"):
        assert looked in str(e.value)


def test_missing_npz_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_npz(tmp_path / "f.npz")
    assert str(tmp_path / "f.npz") in str(e.value) and "json_to_npz" in str(e.value)


def test_corrupt_npz(tmp_path):
    path = tmp_path / NPZ_NAME
    path.write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(DataError, match="corrupt") as e:
        load_femnist(tmp_path)
    assert "delete it and re-create it with" in str(e.value) and "json_to_npz" in str(e.value)


def test_truncated_npz(tmp_path):
    make_tiny_femnist(tmp_path, writers=3)
    path = tmp_path / NPZ_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt"):
        load_npz(path)


def save_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda a: a.pop("writers"), "missing key.*writers"),
        (lambda a: a.update(counts=a["counts"] + np.array([1, 0, 0])), "counts sum to"),
        (lambda a: a["y"].__setitem__(0, 62), "label 62"),
        (lambda a: a.update(y=a["y"].astype(np.int64)), "y is int64"),
        (lambda a: a.update(x=a["x"][:, :, :27]), r"x is uint8 \[.*, 28, 27\]"),
        (lambda a: a.update(writers=a["writers"][::-1].copy()), "not sorted"),
        (lambda a: a.update(counts=np.array([0, 1, a["counts"].sum() - 1])), "at least one"),
    ],
)
def test_invalid_npz_names_the_problem(tmp_path, change, says):
    arrays = make_tiny_femnist(tmp_path / "gen", writers=3)
    change(arrays)
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=says) as e:
        load_npz(path)
    assert str(path) in str(e.value)


# ---------------------------------------------------------------- cache


def test_second_load_uses_the_cache(tmp_path, cache, monkeypatch):
    want = make_tiny_femnist(tmp_path, writers=3)
    assert_same_arrays(load_npz(tmp_path / NPZ_NAME), want)
    (cached,) = cache.glob("femnist_*.pt")

    def no_decoding(path):
        raise AssertionError("the npz was decoded again instead of read from the cache")

    monkeypatch.setattr(femnist, "_read_npz", no_decoding)
    assert_same_arrays(load_npz(tmp_path / NPZ_NAME), want)
    check_federated(load_femnist(tmp_path), want)
    assert list(cache.glob("femnist_*.pt")) == [cached]


def test_corrupt_cache_is_rewritten(tmp_path, cache):
    want = make_tiny_femnist(tmp_path, writers=3)
    load_npz(tmp_path / NPZ_NAME)
    (cached,) = cache.glob("femnist_*.pt")
    cached.write_bytes(b"garbage")
    assert_same_arrays(load_npz(tmp_path / NPZ_NAME), want)
    assert torch.equal(torch.load(cached, weights_only=True)["y"], torch.from_numpy(want["y"]))


def test_a_changed_npz_gets_a_new_cache(tmp_path, cache):
    make_tiny_femnist(tmp_path, writers=3)
    load_npz(tmp_path / NPZ_NAME)
    want = make_tiny_femnist(tmp_path, writers=4, seed=1)  # same path, other size and time
    st = (tmp_path / NPZ_NAME).stat()
    os.utime(tmp_path / NPZ_NAME, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert_same_arrays(load_npz(tmp_path / NPZ_NAME), want)
    assert len(list(cache.glob("femnist_*.pt"))) == 2


# ---------------------------------------------------------------- the real data


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The real npz, decoded once into a module-wide cache that is deleted afterwards."""
    if not REAL_NPZ.is_file():
        pytest.skip(f"real FEMNIST data not found at {REAL_NPZ} (../shared/data beside the repository)")
    folder = tmp_path_factory.mktemp("real_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMFL_CACHE_DIR", str(folder))
        yield load_npz(REAL_NPZ), folder
    for p in folder.iterdir():
        p.unlink()


def test_real_data_facts(real):
    a, _ = real
    n = a["counts"]
    assert len(a["writers"]) == len(n) == 3597
    assert len(a["x"]) == len(a["y"]) == n.sum() == 817_851
    assert np.unique(a["y"]).tolist() == list(range(62))
    assert (n.min(), np.median(n), n.max()) == (19, 179, 584)
    assert a["writers"][0] == "f0000_14"


def test_real_data_split_sizes(real):
    n = real[0]["counts"]
    train, test = writer_split(n, seed=0)
    sizes = np.array([len(t) for t in train])
    np.testing.assert_array_equal(sizes, np.maximum(1, np.floor(0.9 * n)).astype(int))
    np.testing.assert_array_equal(sizes + [len(t) for t in test], n)


def test_real_load_femnist_first_writers(real, monkeypatch):
    a, folder = real
    monkeypatch.setenv("EMFL_CACHE_DIR", str(folder))  # the cache made by the fixture
    data = load_femnist(REAL_DIR, max_writers=50)
    assert data.num_clients == 50 and data.info["samples"] == int(a["counts"][:50].sum())
    assert data.info["source"] == str(REAL_NPZ)
    assert 0.9 < data.mean[0] < 1.0 and 0.1 < data.std[0] < 0.3  # white background, dark strokes
    check_federated(data, a)


def test_converter_command(tmp_path, monkeypatch, capsys):
    from emfl.__main__ import main

    monkeypatch.setenv("EMFL_CACHE_DIR", str(tmp_path / "cache"))
    made = femnist.make_tiny_femnist(tmp_path / "leaf", writers=3, seed=1, fmt="json")
    assert main(["femnist-npz", str(tmp_path / "leaf"), str(tmp_path / "out.npz")]) == 0
    assert "3 writers" in capsys.readouterr().out
    assert np.array_equal(femnist.load_npz(tmp_path / "out.npz")["x"], made["x"])
    assert main(["femnist-npz", str(tmp_path / "nothing"), str(tmp_path / "o2.npz")]) == 2
    assert "error:" in capsys.readouterr().err
