"""Runs that never lose or mislead: one writer per history, checkpoints checked on load, a clear
sentence (and nothing lost) when a write fails, leftovers of a killed write cleared, and settings
that cannot be honoured refused instead of silently changed."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from nn_helpers import tiny_federation  # noqa: E402

from emfl.nn import runner  # noqa: E402
from emfl.nn.engine import Engine  # noqa: E402
from emfl.nn.config import RunConfig
from emfl.nn.runner import (CheckpointError, HistoryLock, RunError, checkpoint_path, load_checkpoint,  # noqa: E402
                            run)

CFG = dict(clients_per_round=2, batch_size=8, eval_every=1, checkpoint_every=1)


@pytest.fixture(scope="module")
def data():
    return tiny_federation(clients=4, n=16, m=4)


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# ----------------------------------------------------------------------------- one writer


def test_a_second_writer_of_one_history_is_refused(tmp_path, data):
    out = tmp_path / "r.json"
    with HistoryLock(out):  # a run of this history is going on
        with pytest.raises(RunError, match="another run is writing .*r.json.* choose another --out"):
            run(RunConfig(rounds=1, **CFG), out, data=data, progress=False)
        # the same file by another spelling of its path is the same history
        with pytest.raises(RunError, match="another run is writing"):
            run(RunConfig(rounds=1, **CFG), tmp_path / "sub" / ".." / "r.json", data=data, progress=False)
    assert not out.exists() and not checkpoint_path(out).exists()  # the refused runs wrote nothing
    run(RunConfig(rounds=1, **CFG), out, data=data, progress=False)  # once it is free, a run goes ahead
    assert not (tmp_path / ".r.json.lock").exists()  # and leaves no lock file behind


def test_the_lock_of_a_killed_run_is_gone_with_its_process(tmp_path, data):
    out = tmp_path / "r.json"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom emfl.nn.runner import HistoryLock\n"
                               f"with HistoryLock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match="another run is writing"):  # another process holds it
            run(RunConfig(rounds=1, **CFG), out, data=data, progress=False)
    finally:
        holder.kill()  # kill -9: no clean-up of its own
        holder.wait()
    assert (tmp_path / ".r.json.lock").exists()  # the file stays, the lock does not
    run(RunConfig(rounds=1, **CFG), out, data=data, progress=False)
    assert json.loads(out.read_text())["complete"]


# ----------------------------------------------------------------------------- checkpoints


def _checkpointed(tmp_path, data, rounds=2):
    out = tmp_path / "r.json"
    run(RunConfig(rounds=rounds, **CFG), out, data=data, progress=False)
    return out, checkpoint_path(out)


def test_a_damaged_checkpoint_is_refused_not_trained_on(tmp_path, data):
    out, ckpt = _checkpointed(tmp_path, data)
    assert load_checkpoint(ckpt)["round"] == 2
    blob = bytearray(ckpt.read_bytes())
    middle = len(blob) // 2  # the bulk of the file is the state's bytes (three model-sized vectors)
    for i in range(20):
        blob[middle + 97 * i] ^= 0xFF
    ckpt.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        load_checkpoint(ckpt)
    with pytest.raises(RunError, match=f"cannot be read .*delete it and the history {out}"):
        run(RunConfig(rounds=4, **CFG), out, data=data, resume=True, progress=False)


def test_an_empty_checkpoint_is_a_clear_error(tmp_path, data):
    out, ckpt = _checkpointed(tmp_path, data, rounds=1)
    ckpt.write_bytes(b"")
    with pytest.raises(RunError) as err:
        run(RunConfig(rounds=2, **CFG), out, data=data, resume=True, progress=False)
    text = str(err.value)
    assert "0 bytes" in text and f"delete it and the history {out}" in text
    assert "empty or truncated" in text
    assert f"(and {ckpt.with_suffix('')})" not in text  # the old advice named a path that never exists


def test_a_checkpoint_holds_its_checksum(tmp_path, data):
    _, ckpt = _checkpointed(tmp_path, data, rounds=1)
    import hashlib

    outer = torch.load(ckpt, weights_only=True)
    payload = outer["payload"].numpy().tobytes()
    assert outer["sha256"] == hashlib.sha256(payload).hexdigest() and len(outer["sha256"]) == 64
    import io

    assert torch.load(io.BytesIO(payload), weights_only=True)["round"] == 1


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 128 vs 0"),  # torch.save, disk full
    OSError(errno.ENOSPC, "No space left on device"),
    PermissionError(errno.EACCES, "Permission denied"),  # a read-only folder (as a user, not root)
])
def test_a_failed_write_says_so_and_loses_no_finished_round(tmp_path, data, monkeypatch, failure):
    straight = run(RunConfig(rounds=4, **CFG), tmp_path / "straight.json", data=data, progress=False)
    out = tmp_path / "r.json"
    real = runner.atomic_save
    calls = []

    def failing(obj, path):
        calls.append(path)
        if len(calls) == 4:  # round 0 and rounds 1 and 2 saved; round 3 cannot be written
            raise failure
        return real(obj, path)

    monkeypatch.setattr(runner, "atomic_save", failing)
    with pytest.raises(RunError) as err:
        run(RunConfig(rounds=4, **CFG), out, data=data, progress=False)
    text = str(err.value)
    assert "could not write the checkpoint or history of round 3" in text and "--resume" in text
    assert "round 2 and every round before it are safe" in text
    if isinstance(failure, OSError) and failure.errno == errno.ENOSPC:
        assert "no space left on the device" in text
    monkeypatch.setattr(runner, "atomic_save", real)
    assert load_checkpoint(checkpoint_path(out))["round"] == 2
    assert [r["round"] for r in json.loads(out.read_text())["records"]] == [1, 2]
    resumed = run(RunConfig(rounds=4, **CFG), out, data=data, resume=True, progress=False)
    assert _strip(resumed["records"]) == _strip(straight["records"])


def test_leftovers_of_a_killed_write_are_removed_at_the_next_start(tmp_path, data):
    out, ckpt = _checkpointed(tmp_path, data, rounds=1)
    left = [ckpt.parent / f".{ckpt.name}.k3j9x1.tmp", tmp_path / f".{out.name}.a8b2.tmp"]
    for path in left:
        path.write_bytes(b"half a write")
    other = tmp_path / ".other.json.zz.tmp"  # another history's: not this run's to remove
    other.write_bytes(b"x")
    run(RunConfig(rounds=2, **CFG), out, data=data, resume=True, progress=False)
    assert not any(p.exists() for p in left) and other.exists()


# ----------------------------------------------------------------------------- settings


def test_resume_with_fewer_rounds_than_done_is_refused(tmp_path, data):
    out, _ = _checkpointed(tmp_path, data, rounds=3)
    before = out.read_text()
    with pytest.raises(RunError, match="is at round 3, past --rounds 1: pass --rounds 3 or more"):
        run(RunConfig(rounds=1, **CFG), out, data=data, resume=True, progress=False)
    assert out.read_text() == before
    doc = run(RunConfig(rounds=3, **CFG), out, data=data, resume=True, progress=False)  # equal: complete as it is
    assert doc["config"]["rounds"] == 3 and [r["round"] for r in doc["records"]] == [1, 2, 3]


def test_more_clients_per_round_than_clients_is_refused(data):
    with pytest.raises(ValueError, match="clients_per_round is 1000 but the data set has 4 clients: "
                                         "pass --clients-per-round 4 or fewer"):
        Engine(RunConfig(clients_per_round=1000), data)
    assert len(Engine(RunConfig(clients_per_round=4), data).sample_clients(0)) == 4  # all of them is fine


def test_the_bits_task_gets_its_own_model_and_refuses_a_conv_net(tmp_path, capsys):
    from emfl.__main__ import main

    assert RunConfig(task="bits").model == "mlp-tanh" and RunConfig().model == "lenet5"
    assert RunConfig(task="femnist").model == "lenet5"
    with pytest.raises(ValueError, match="the bits task's inputs do not fit the model lenet5: pass --model mlp-tanh"):
        RunConfig(task="bits", model="lenet5")
    out = tmp_path / "bits.json"
    assert main(["run", "--task", "bits", "--rounds", "1", "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["config"]["model"] == "mlp-tanh"  # the history says what ran
    assert main(["run", "--task", "bits", "--model", "resnet20", "--rounds", "1", "--out", str(tmp_path / "x.json"),
                 "--quiet"]) == 2
    assert "pass --model mlp-tanh" in capsys.readouterr().err


def test_an_absurd_lam0_is_refused_and_the_largest_allowed_runs(data):
    with pytest.raises(ValueError, match="lam0 must be at most 1; got 1e\\+38"):
        RunConfig(algo="fedsparse", lam0=1e38)
    sparsity = {}
    for lam0 in (0.0, 1.0):
        e = Engine(RunConfig(algo="fedsparse", lam0=lam0, **CFG), data)
        for _ in range(2):
            info = e.run_round()
        assert torch.isfinite(e.w).all() and torch.isfinite(e.server["v"]).all()
        sparsity[lam0] = info["sparsity"]
    assert sparsity[1.0] > sparsity[0.0]  # it computes, and the L0 cost prunes


def test_the_history_records_the_kernels_it_was_computed_with(tmp_path, data):
    doc = run(RunConfig(rounds=1, **CFG), tmp_path / "r.json", data=data, progress=False)
    hw = json.loads((tmp_path / "r.json").read_text())["hardware"]
    assert hw == doc["hardware"] and hw["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert hw["threads"] == torch.get_num_threads()
