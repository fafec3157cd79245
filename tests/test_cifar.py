"""CIFAR-10 loading (every source format, the cache, errors) and Hsu et al.'s split."""

from pathlib import Path

import numpy as np
import pytest
import torch

from emfl.nn import cifar
from emfl.nn.data import DataError, channel_stats, sample_with_proportions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMFL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("fmt", ["imagefolder", "tarball"])
def test_image_folder_and_tarball_round_trip(tmp_path, fmt):
    made = cifar.make_tiny_cifar10(tmp_path / "d", per_class=3, test_per_class=2, fmt=fmt)
    arrays = cifar.load_cifar10_arrays(tmp_path / "d")
    assert arrays["train_x"].shape == (30, 3, 32, 32) and arrays["train_x"].dtype == torch.uint8
    assert arrays["test_y"].tolist() == made["test_y"].tolist()
    assert np.array_equal(arrays["train_x"].permute(0, 2, 3, 1).numpy(), made["train_x"])  # PNG is lossless
    cached = list((tmp_path / "cache").glob("cifar10-*.pt"))
    assert len(cached) == 1
    again = cifar.load_cifar10_arrays(tmp_path / "d")  # from the cache
    assert torch.equal(again["train_x"], arrays["train_x"])


def test_caches_of_an_earlier_version_are_not_read(tmp_path):
    """A version-1 cache may hold an incompletely unpacked test set: it must be ignored."""
    made = cifar.make_tiny_cifar10(tmp_path / "d", per_class=2, test_per_class=2, fmt="tarball")
    key = cifar._key(tmp_path / "d" / cifar.TARBALL)
    (tmp_path / "cache").mkdir()
    torch.save({"train_x": torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "train_y": torch.zeros(1, dtype=torch.int64),
                "test_x": torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "test_y": torch.zeros(1, dtype=torch.int64)},
               tmp_path / "cache" / f"cifar10-{key}.pt")
    arrays = cifar.load_cifar10_arrays(tmp_path / "d")
    assert arrays["test_y"].tolist() == made["test_y"].tolist() and len(arrays["train_y"]) == 20


def test_runs_started_together_unpack_the_tarball_once_without_tripping(tmp_path):
    """Two runs on a fresh machine unpack at the same time: each works in its own temporary
    folder, one rename wins, both read the same images, and no temporary folder is left."""
    import threading

    cifar.make_tiny_cifar10(tmp_path / "d", per_class=2, test_per_class=1, fmt="tarball")
    tarball = tmp_path / "d" / cifar.TARBALL
    stale = tmp_path / "cache" / f"cifar10-jpeg-v{cifar.CACHE_VERSION}-{cifar._key(tarball)}"
    (stale / "train").mkdir(parents=True)  # half-made by an interrupted run: no .complete
    roots, errors = [], []

    def unpack():
        try:
            roots.append(cifar._unpack_tarball(tarball))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=unpack) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(roots)) == 1
    assert (roots[0] / ".complete").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [stale.name]
    assert len(list((roots[0] / "train").rglob("*.png"))) == 20


def test_official_python_format_through_a_local_download(tmp_path, monkeypatch):
    """The --download path end to end: torchvision fetches a local archive from a web server on
    the loopback address, checks its md5 and unpacks it; then every file's md5 is checked."""
    import functools
    import http.server
    import tarfile
    import threading

    from torchvision.datasets import CIFAR10

    from emfl.nn.data import file_md5

    src = tmp_path / "src"
    made = cifar.make_tiny_cifar10(src, per_class=2, test_per_class=1, fmt="python")
    base = src / "cifar-10-batches-py"
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="cifar-10-batches-py")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda *a: None  # a client that hangs up early is not an error here
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_address[1]}/{archive.name}")
        monkeypatch.setattr(CIFAR10, "tgz_md5", file_md5(archive))
        monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", file_md5(base / f"data_batch_{i}")] for i in range(1, 6)])
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", file_md5(base / "test_batch")]])
        monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": file_md5(base / "batches.meta")})
        target = tmp_path / "empty"
        target.mkdir()
        with pytest.raises(DataError, match="no usable CIFAR-10.*--download"):
            cifar.load_cifar10_arrays(target)
        arrays = cifar.load_cifar10_arrays(target, download=True)
    finally:
        server.shutdown()
        server.server_close()
    assert arrays["train_y"].tolist() == made["train_y"].tolist()
    assert np.array_equal(arrays["test_x"].permute(0, 2, 3, 1).numpy(), made["test_x"])
    # a damaged file fails torchvision's md5 check: a clear error, not garbage
    with open(target / "cifar-10-batches-py" / "test_batch", "ab") as f:
        f.write(b"junk")
    for p in (tmp_path / "cache").glob("*.pt"):
        p.unlink()
    with pytest.raises(DataError, match="no usable CIFAR-10"):
        cifar.load_cifar10_arrays(target)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        cifar.load_cifar10_arrays(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / cifar.TARBALL).write_bytes(b"\x1f\x8b this is not a gzip stream")
    with pytest.raises(DataError, match="corrupt or truncated.*copy it again"):
        cifar.load_cifar10_arrays(bad)
    partial = tmp_path / "partial"
    (partial / "train" / "airplane").mkdir(parents=True)
    (partial / "test").mkdir()
    with pytest.raises(DataError, match="has no train/automobile"):
        cifar.load_cifar10_arrays(partial)


def test_sample_with_proportions_by_hand():
    rng = np.random.default_rng(0)
    pools = [[1, 2, 3], [10, 20], [100]]
    drawn = sample_with_proportions(pools, np.array([1.0, 0.0, 0.0]), 4, rng)
    # class 0 only, until it runs out (3 items); then the empty-weight fallback takes what is left
    assert sorted(drawn[:3].tolist()) == [1, 2, 3]
    assert drawn[3] in (10, 20, 100)
    with pytest.raises(ValueError, match="cannot draw"):
        sample_with_proportions([[1]], np.array([1.0]), 2, rng)


def test_dirichlet_split_properties():
    rng = np.random.default_rng(1)
    train_y, test_y = np.repeat(np.arange(10), 500), np.repeat(np.arange(10), 100)
    tr, te, q = cifar.dirichlet_split(train_y, test_y, num_shards=10, shard_size=400, alpha=1.0, seed=3)
    assert [len(i) for i in tr] == [400] * 10 and [len(i) for i in te] == [100] * 10
    assert len(np.unique(np.concatenate(tr))) == 4000  # training shards are disjoint
    assert all(len(np.unique(i)) == 100 for i in te)  # no repeats within a test set
    assert np.allclose(q.sum(axis=1), 1)
    again = cifar.dirichlet_split(train_y, test_y, num_shards=10, shard_size=400, alpha=1.0, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(tr, again[0]))
    # alpha sets the skew: share of a shard taken by its largest class
    def top_share(alpha):
        t, _, _ = cifar.dirichlet_split(train_y, test_y, num_shards=10, shard_size=200, alpha=alpha, seed=0)
        return np.mean([np.bincount(train_y[i], minlength=10).max() / len(i) for i in t])
    assert top_share(0.1) > 0.8 > 0.3 > top_share(1000.0)
    # each shard's test set has the class proportions of its training images (largest remainder)
    for i, j in zip(tr, te):
        train_share = np.bincount(train_y[i], minlength=10) / 400
        assert np.abs(np.bincount(test_y[j], minlength=10) - 100 * train_share).max() < 1
    with pytest.raises(ValueError, match="alpha must be > 0"):
        cifar.dirichlet_split(train_y, test_y, alpha=0.0)
    with pytest.raises(ValueError, match="need 60000 training images"):
        cifar.dirichlet_split(train_y, test_y, num_shards=120, shard_size=500)


def test_channel_stats_by_hand():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    mean, std = channel_stats(x)
    assert mean == (0.5,) and std[0] == pytest.approx(np.sqrt(0.5))  # values 0, 1; unbiased var 0.5


def test_load_cifar10_on_tiny_data(tmp_path):
    cifar.make_tiny_cifar10(tmp_path, per_class=20, test_per_class=30, fmt="imagefolder")
    data = cifar.load_cifar10(tmp_path, num_shards=5, shard_size=30, test_size=20, seed=0)
    assert data.num_clients == 5 and data.input_shape == (3, 32, 32)
    assert data.train_sizes().tolist() == [30] * 5 and data.test_sizes().tolist() == [20] * 5
    x = data.normalize(data.train_x[0])
    assert x.dtype == torch.float32 and x.shape == (30, 3, 32, 32)


@pytest.mark.skipif(not (SHARED / cifar.TARBALL).exists(), reason="../shared/data has no CIFAR-10 copy")
def test_real_cifar10_split():
    data = cifar.load_cifar10(SHARED, seed=0)
    assert data.num_clients == 100 and set(data.train_sizes()) == {500} and set(data.test_sizes()) == {100}
    train = torch.cat(data.train_y)
    assert torch.bincount(train).tolist() == [5000] * 10  # 100 x 500 uses every training image
    gx, gy = data.test_union()  # shards draw test images independently: about 1 - 1/e of them
    assert 5_000 < len(gy) < 8_000 and gx.shape == (len(gy), 3, 32, 32)
    assert all(400 < c < 900 for c in torch.bincount(gy).tolist())
    for y, t in zip(data.train_y, data.test_y):  # each test set has its shard's class proportions
        expected = cifar._largest_remainder(torch.bincount(y, minlength=10).double().numpy(), 100)
        assert torch.bincount(t, minlength=10).tolist() == expected.tolist()
    assert data.mean[0] == pytest.approx(0.4913, abs=1e-3)  # the README's channel means
    skew = np.mean([torch.bincount(y, minlength=10).max().item() / 500 for y in data.train_y])
    assert skew > 0.5  # alpha = 1 (Dir(0.1, ...)): the largest class holds most of a shard


def test_largest_remainder_by_hand():
    # shares 1:1:1 of 10 -> 3.33 each; one extra goes to the first of the tied remainders
    assert cifar._largest_remainder(np.array([1.0, 1.0, 1.0]), 10).tolist() == [4, 3, 3]
    # 66.2, 32.8, 1.0 -> floors 66, 32, 1; the one left goes to the largest remainder (0.8)
    assert cifar._largest_remainder(np.array([331.0, 164.0, 5.0]), 100).tolist() == [66, 33, 1]


def test_disjoint_test_split():
    train_y, test_y = np.repeat(np.arange(10), 500), np.repeat(np.arange(10), 100)
    tr, te, q = cifar.dirichlet_split(train_y, test_y, num_shards=10, shard_size=500, alpha=1.0, seed=2,
                                      test_split="disjoint")
    assert sorted(np.concatenate(te).tolist()) == list(range(1000))  # disjoint, covering the test set
    matched = cifar.dirichlet_split(train_y, test_y, num_shards=10, shard_size=500, alpha=1.0, seed=2)
    assert len(np.unique(np.concatenate(matched[1]))) < 1000  # matched sets may overlap
    with pytest.raises(ValueError, match="test_split must be"):
        cifar.dirichlet_split(train_y, test_y, test_split="random")
