"""What a Flower node keeps of its clients between rounds, on disk (emfl.flower.memory): which file a
resume reads, which files a stopped run leaves that a resume must not read, which ones are removed.

Round indices are 0-based, as the engine's ``plan.rnd``: the server's checkpoint after ``c`` rounds
pairs with each client's newest file of an index below ``c``."""

import pytest

from emfl.flower.memory import ClientMemory, from_bytes, memory_name, to_bytes


def _rounds(store, s):
    return [r for r, _ in store._versions(s)]


def test_recall_reads_the_newest_file_before_the_round(tmp_path):
    store = ClientMemory(tmp_path / "m", every=10)  # keeps every file of these ten rounds
    assert store.recall(3, 0) is None  # nothing yet
    store.keep(3, 1, b"after 1")
    store.keep(3, 4, b"after 4")
    store.keep(5, 2, b"five")
    assert store.recall(3, 9) == b"after 4"
    assert store.recall(3, 5) == b"after 4"
    assert store.recall(5, 9) == b"five"
    assert store.clients() == [3, 5]
    assert store.recall(3, 2) == b"after 1"  # a run going on at index 2 never wrote index 4: it goes
    assert store.recall(3, 9) == b"after 1"


def test_a_resume_removes_what_a_stopped_run_wrote_after_its_checkpoint(tmp_path):
    store = ClientMemory(tmp_path / "m", every=10)
    for r in (0, 3, 6, 7):
        store.keep(2, r, f"r{r}".encode())
    # the run stopped after writing round index 7; its checkpoint holds 5 rounds: resume at index 5
    assert store.recall(2, 5) == b"r3"
    assert _rounds(store, 2) == [0, 3]  # 6 and 7 belong to rounds the resumed run does again
    store.keep(2, 5, b"again")
    assert store.recall(2, 6) == b"again"


@pytest.mark.parametrize("every,left", [(1, [5, 6]), (2, [4, 5, 6]), (3, [2, 4, 5, 6])])
def test_keep_removes_the_files_no_checkpoint_can_pair_with(tmp_path, every, left):
    # files at 0, 2, 4, 5, 6; the checkpoint is at most `every` rounds behind the round being run (6):
    # every = 1: a resume starts at 6 (reads 5) or 7 (reads 6); every = 2: also at 5 (reads 4);
    # every = 3: also at 4 (reads 2)
    store = ClientMemory(tmp_path / "m", every=every)
    for r in (0, 2, 4, 5, 6):
        store.keep(0, r, b"x")
    assert _rounds(store, 0) == left


def test_keep_writes_whole_files_only(tmp_path):
    store = ClientMemory(tmp_path / "m")
    store.keep(1, 0, b"a" * 1000)
    assert sorted(p.name for p in (tmp_path / "m" / "client-1").iterdir()) == ["round-000000.npz"]
    assert (tmp_path / "m" / "client-1" / "round-000000.npz").read_bytes() == b"a" * 1000


def test_memory_name_follows_the_checkpoint(tmp_path):
    assert memory_name(tmp_path / "run.json.0123456789.ckpt") == "run.json.0123456789.ckpt.memory"


def test_memory_is_a_tensor_or_a_dict_of_tensors_read_without_pickle():
    import io

    import numpy as np
    import torch

    from emfl.flower import FlowerError

    one = from_bytes(to_bytes(torch.tensor([1, 2, 255], dtype=torch.uint8)))
    two = from_bytes(to_bytes({"c": torch.tensor([0.5, -1.0], dtype=torch.float64), "m": torch.tensor([7.0])}))
    assert one.dtype == torch.uint8 and one.tolist() == [1, 2, 255]
    assert sorted(two) == ["c", "m"] and two["c"].dtype == torch.float64 and two["c"].tolist() == [0.5, -1.0]
    assert from_bytes(None) is None
    with pytest.raises(FlowerError, match="a tensor or a dict of tensors"):
        to_bytes([torch.ones(2)])
    buf = io.BytesIO()
    np.savez(buf, single=np.array([{"code": 1}], dtype=object))  # an object array needs pickle to read
    with pytest.raises(ValueError, match="allow_pickle"):
        from_bytes(buf.getvalue())
