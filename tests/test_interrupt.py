"""Interrupted runs lose at most a round and never lock the user out: real ``python -m emfl run``
processes on a tiny generated FEMNIST are killed (SIGKILL) at random moments, or stopped with
SIGINT / SIGTERM, then continued with ``--resume``; every continued run must equal the
uninterrupted one record for record.  Presets against explicit flags, and ``--help``."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emfl.nn.femnist import make_tiny_femnist
from emfl.nn.runner import checkpoint_path as _checkpoint_path
from emfl.nn.runner import load_checkpoint

ROUNDS = 30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny FEMNIST folder, a cache folder, and the uninterrupted run's records."""
    root = tmp_path_factory.mktemp("interrupt")
    make_tiny_femnist(root / "data", writers=6, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EMFL_CACHE_DIR": str(root / "cache"), "TQDM_MININTERVAL": "0"}
    env.pop("EMFL_DATA_DIR", None)
    w = {"root": root, "env": env}
    out = root / "straight.json"
    proc = subprocess.Popen(_args(w, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = _wait_for(checkpoint_path(out))  # written at round 0, once the data is loaded
    _, err = proc.communicate(timeout=300)
    w["training"] = time.perf_counter() - started  # the rounds, evaluations and checkpoints
    assert proc.returncode == 0, err
    w["records"] = _records(out)
    assert [r["round"] for r in w["records"]] == [10, 20, 30]
    return w


def checkpoint_path(out):
    """The checkpoint of ``out`` in the folder beside it that the runs below are given."""
    return _checkpoint_path(out, Path(out).parent / "checkpoints")


def _wait_for(path, timeout=120):
    deadline = time.perf_counter() + timeout
    while not path.exists():
        assert time.perf_counter() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return time.perf_counter()


def _args(w, out, resume=False):
    return [sys.executable, "-m", "emfl", "run", "--task", "femnist", "--data-dir", str(w["root"] / "data"),
            "--out", str(out), "--checkpoint-dir", str(Path(out).parent / "checkpoints"), "--rounds", str(ROUNDS), "--clients-per-round", "2", "--eval-every", "10",
            "--quiet"] + (["--resume"] if resume else [])


def _cli(w, out, resume=False):
    return subprocess.run(_args(w, out, resume), env=w["env"], capture_output=True, text=True, timeout=300)


def _records(path):
    """The records without their timings (the only field a resumed run may change)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(path.read_text())["records"]]


def _consistent(out):
    """Whatever a kill left: the history is never ahead of the checkpoint."""
    ckpt = checkpoint_path(out)
    if out.exists():
        assert ckpt.exists(), "a history without a checkpoint cannot be resumed"
        saved = load_checkpoint(ckpt)
        rounds = [r["round"] for r in json.loads(out.read_text())["records"]]
        assert not rounds or rounds[-1] <= saved["round"]


def _wait_for_round(log, k, proc, timeout=120):
    """Wait until the progress bar in ``log`` shows round ``k`` ended (or the process ended)."""
    deadline = time.perf_counter() + timeout
    while proc.poll() is None:
        shown = [int(n) for n in re.findall(rf"(\d+)/{ROUNDS}", log.read_text())]
        if max(shown, default=-1) >= k:
            return
        assert time.perf_counter() < deadline, f"round {k} never ended"
        time.sleep(0.005)


def test_sigkill_at_random_moments_then_resume_equals_the_straight_run(world):
    rng = np.random.default_rng(0)
    # one kill while python starts (nothing written yet), three at random moments of the training:
    # after a random round has ended, plus a random part of one round's time (so the kill can land
    # anywhere inside a round, its evaluation or its saving).  Waiting for the round, not for a
    # wall-clock time, keeps the kills inside the run on a fast or a slow machine.
    rounds = rng.choice(np.arange(3, ROUNDS - 5), size=3, replace=False)
    per_round = world["training"] / ROUNDS
    moments = [None] + [(int(r), float(rng.uniform(0, per_round))) for r in rounds]
    resumed_from = []
    for k, moment in enumerate(moments):
        out = world["root"] / f"killed{k}.json"
        log = world["root"] / f"killed{k}.log"
        args = [a for a in _args(world, out) if a != "--quiet"]  # the progress bar says which rounds ended
        with open(log, "w") as err:
            proc = subprocess.Popen(args, env=world["env"], stdout=subprocess.DEVNULL, stderr=err)
        if moment is None:
            time.sleep(0.2)
        else:
            _wait_for_round(log, moment[0], proc)
            time.sleep(moment[1])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        _consistent(out)
        ckpt = checkpoint_path(out)
        resumed_from.append(int(load_checkpoint(ckpt)["round"]) if ckpt.exists() else -1)
        shown = [int(n) for n in re.findall(rf"(\d+)/{ROUNDS}", log.read_text())]
        assert resumed_from[-1] >= max(shown, default=-1), "a round that had ended was lost"
        done = _cli(world, out, resume=True)
        assert done.returncode == 0, done.stderr
        assert _records(out) == world["records"], f"killed at moment {k}"
    # the kills really cut runs short, not only before or after
    assert resumed_from[0] == -1 and sum(0 < r < ROUNDS for r in resumed_from) >= 2, resumed_from


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_save_the_round_and_say_how_to_continue(world, sig):
    out = world["root"] / f"stopped{int(sig)}.json"
    proc = subprocess.Popen(_args(world, out), env=world["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and json.loads(out.read_text())["records"]):
        time.sleep(0.02)  # wait for the first evaluated round
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    saved = int(load_checkpoint(checkpoint_path(out))["round"])
    assert 10 <= saved < ROUNDS
    assert lines[0] == f"interrupted after round {saved}; continue with --resume ({out})"
    assert json.loads(out.read_text())["records"][-1]["round"] <= saved
    done = _cli(world, out, resume=True)
    assert done.returncode == 0, done.stderr
    assert _records(out) == world["records"]


def _main(world, out, *extra):
    """The command line in this process (no start-up cost)."""
    from emfl.__main__ import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same float32 sums
    try:
        return main(_args(world, out)[3:] + list(extra))
    finally:
        torch.set_num_threads(threads)


def test_nothing_written_yet_resume_starts_afresh(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMFL_CACHE_DIR", world["env"]["EMFL_CACHE_DIR"])
    out = tmp_path / "new.json"
    assert _main(world, out, "--resume") == 0
    assert "starting from round 0" in capsys.readouterr().err
    assert _records(out) == world["records"]


def test_a_preset_and_a_contradicting_flag_is_an_error(tmp_path, capsys):
    from emfl.__main__ import main

    out = str(tmp_path / "x.json")
    assert main(["run", "--algo", "fedsparse-mid", "--lam0", "-1", "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--lam0 -1.0 contradicts --algo fedsparse-mid, which sets lam0 = 5e-06" in err
    assert not (tmp_path / "x.json").exists()
    assert main(["run", "--algo", "fedsparse-mid", "--lam0=1e-3", "--out", out, "--quiet"]) == 2
    assert "contradicts --algo fedsparse-mid" in capsys.readouterr().err
    # the same value as the preset's is no contradiction; the run then stops only at the missing data
    assert main(["run", "--algo", "fedsparse-mid", "--lam0", "5e-6", "--out", out, "--data-dir",
                 str(tmp_path), "--quiet"]) == 2
    assert "no usable CIFAR-10" in capsys.readouterr().err
    assert main(["run", "--algo", "fedsparse", "--lam0", "-1", "--out", out, "--quiet"]) == 2
    assert "lam0 must be a number >= 0" in capsys.readouterr().err


def test_the_history_records_the_preset_as_given(world, tmp_path, monkeypatch):
    monkeypatch.setenv("EMFL_CACHE_DIR", world["env"]["EMFL_CACHE_DIR"])
    out = tmp_path / "p.json"
    assert _main(world, out, "--algo", "fedsparse-high", "--rounds", "1") == 0
    config = json.loads(out.read_text())["config"]
    assert (config["preset"], config["algo"], config["lam0"]) == ("fedsparse-high", "fedsparse", 5e-5)


def test_help_shows_every_default(capsys):
    from emfl.__main__ import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    entries = {m.group(1): m.group(0) for m in re.finditer(r"^  (--[a-z0-9-]+).*?(?=^  -|\Z)", text, re.S | re.M)}
    flags = set(re.findall(r"^  (--[a-z0-9-]+)", text, re.M))
    assert len(flags) >= 30
    no_default = {"--help", "--out", "--resume", "--download", "--quiet", "--data-dir"}
    for flag in flags - no_default:
        assert "(default: " in " ".join(entries[flag].split()), flag
    assert "(default: 5e-06)" in " ".join(entries["--lam0"].split())
    assert "(default: 1)" in " ".join(entries["--checkpoint-every"].split())
