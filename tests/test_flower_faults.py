"""A deployment survives its own processes dying: `python -m emfl flower` on the 12-bit task (two
SuperNodes on 127.0.0.1) is started for real, one process of a kind is killed at a random moment
(seeded), and then

* the command ends within a bounded time, with exit code 2 and a sentence naming --resume (a
  dead ServerApp, SuperLink, SuperNode or worker, in which the node's ClientApp runs), or with
  128 + the signal for a SIGTERM or SIGHUP of the command itself;
* nothing the command started is still running: every process ever seen below the command (by
  parent links, polled all along, each with its start time so that a reused pid is not mistaken
  for it) has ended;
* the checkpoint reads back (checksum and all) and the history is never ahead of it;
* ``--resume`` (the deployment again, or ``emfl run``, from the deployment's checkpoint) finishes
  the run, equal record for record (float64) to the engine's run.

Needs the extra (`pip install -e '.[flower]'`; `./dev test` installs it)."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install -e '.[flower]'")

from emfl.flower.guard import alive, descendants  # noqa: E402
from emfl.nn.runner import checkpoint_path, load_checkpoint  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from flower_helpers import assert_same_run, one_thread, server_weights  # noqa: E402,F401

ROUNDS = 4
# SCAFFOLD: each client keeps c_i between its rounds, on its node (5 clients, 4 a round: they come
# back); what a node kept after the checkpoint of a killed run must not reach the resumed one
FLAGS = ["--algo", "scaffold", "--task", "bits", "--model", "mlp-tanh", "--rounds", str(ROUNDS), "--eval-every", "1",
         "--clients-per-round", "4", "--num-shards", "5", "--precision", "float64", "--quiet"]
BOUND = 90  # seconds within which the command must end after a process died (--round-timeout 30)


def _start_time(pid: int):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Watch:
    """Every process below ``root`` seen while it runs (pid -> start time), polled every 50 ms."""

    def __init__(self, root: int):
        self.root, self.seen, self.stop = root, {}, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while not self.stop.is_set():
            for p in descendants(self.root) + [self.root]:
                if p not in self.seen:
                    self.seen[p] = _start_time(p)
            for p in list(self.seen):  # the guard's tree, once the command is gone
                for q in descendants(p):
                    if q not in self.seen:
                        self.seen[q] = _start_time(q)
            time.sleep(0.05)

    def find(self, kind: str) -> int | None:
        for p in descendants(self.root):
            if kind in _cmdline(p) and alive(p):
                return p
        return None

    def running(self) -> list:
        """Seen processes that still run (the same pid with the same start time)."""
        return [p for p, t in self.seen.items() if alive(p) and _start_time(p) == t]

    def close(self):
        self.stop.set()
        self.thread.join()


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    from emfl.__main__ import main

    root = tmp_path_factory.mktemp("faults")
    out = root / "engine.json"
    assert main(["run", *FLAGS, "--checkpoint-dir", str(root / "ck"), "--out", str(out)]) == 0
    return out, root / "ck"


def _history_round(out: Path) -> int:
    try:
        doc = json.loads(out.read_text())
    except (FileNotFoundError, ValueError):
        return -1
    return doc["records"][-1]["round"] if doc.get("records") else 0


def _command(out: Path, ck: Path, *more) -> list:
    return [sys.executable, "-m", "emfl", "flower", *FLAGS, "--supernodes", "2", "--round-timeout", "30",
            "--checkpoint-dir", str(ck), "--out", str(out), *more]


# what to kill, how, the exit code the command must end with, and what resumes the run: the
# deployment again, or `emfl run --resume` (the engine, from the deployment's checkpoint: faster).
# The ClientApp runs inside the worker (its node's executor): killing the worker kills it.
CASES = {
    "command-SIGTERM": ("command", signal.SIGTERM, 128 + signal.SIGTERM, "flower"),
    "command-SIGHUP": ("command", signal.SIGHUP, 128 + signal.SIGHUP, "run"),
    "command-SIGKILL": ("command", signal.SIGKILL, -signal.SIGKILL, "flower"),
    "serverapp": ("flwr-serverapp", signal.SIGKILL, 2, "flower"),
    "superlink": ("flower-superlink", signal.SIGKILL, 2, "run"),
    "supernode": ("emfl.flower.supernode", signal.SIGKILL, 2, "run"),  # Flower's SuperNode, its waits capped
    "worker": ("emfl.flower.node", signal.SIGKILL, 2, "run"),
    "simulation-SIGKILL": ("command", signal.SIGKILL, -signal.SIGKILL, "run"),  # Flower's simulation: Ray's processes
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_process_ends_the_command_leaves_nothing_and_resume_equals_the_engine(tmp_path, engine_run, case):
    kind, sig, code, resume_with = CASES[case]
    rng = random.Random(case)  # a random moment, the same one each time the test runs
    out, ck = tmp_path / "flower.json", tmp_path / "ck"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: processes left running would hold a pipe open
    simulation = case.startswith("simulation")
    with open(log, "w") as err:
        # Ray starts its workers for the first round in 20-60 s on a busy machine: a longer first wait
        cmd = subprocess.Popen(_command(out, ck, *(["--simulation", "--round-timeout", "300"] if simulation else [])), env=env, stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
    watch = Watch(cmd.pid)
    try:
        moment = rng.randint(1, ROUNDS - 2)  # after round `moment` is in the history, and a random delay
        end = time.monotonic() + 300
        while _history_round(out) < moment and cmd.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert cmd.poll() is None, f"the run ended before round {moment}: {log.read_text()}"
        time.sleep(rng.uniform(0, 1.0))
        victim = cmd.pid if kind == "command" else None
        while victim is None and time.monotonic() < end:  # a ClientApp lives for one message only
            victim = watch.find(kind)
        assert victim is not None, f"no {kind} process below the command"
        os.kill(victim, sig)
        killed = time.monotonic()
        try:
            cmd.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            cmd.kill()
            pytest.fail(f"the command did not end within {BOUND} s after {kind} was killed: {log.read_text()}")
        stderr = log.read_text()
        assert cmd.returncode == code, stderr
        if code >= 0:
            assert "--resume" in stderr, stderr
        if code == 2:
            assert time.monotonic() - killed < BOUND
        deadline = time.monotonic() + 30
        while watch.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: _cmdline(p) for p in watch.running()}
        assert left == {}, f"still running after {kind} was killed: {left}"
        # the guard, SuperLink, 2 workers, 2 SuperNodes, the ServerApp...; the guard, Ray's raylet,
        # GCS server, agents and workers
        assert len(watch.seen) >= 7
    finally:
        watch.close()
        if cmd.poll() is None:
            cmd.kill()
    state = load_checkpoint(checkpoint_path(out, ck))  # reads back, checksum checked
    assert 0 <= _history_round(out) <= int(state["round"]) < ROUNDS
    if resume_with == "flower":
        argv = _command(out, ck, "--resume")
    else:
        argv = [sys.executable, "-m", "emfl", "run", *FLAGS, "--checkpoint-dir", str(ck), "--out", str(out), "--resume"]
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads(engine_run[0].read_text()), json.loads(out.read_text())
    if resume_with == "flower":
        assert b["transport"]["wire_first_round"] == int(state["round"]) + 1  # the resumed run sent the rest
        b["transport"]["wire_first_round"] = 1  # and counts the bytes of its own rounds only: as if all
        b["transport"]["wire_bytes_down"] = a["records"][-1]["bytes_down"]
        b["transport"]["wire_bytes_up"] = a["records"][-1]["bytes_up"]
        assert_same_run(a, b, server_weights(*engine_run), server_weights(out, ck))
    else:
        b["transport"] = {"name": "flower", "wire_first_round": 1, "wire_bytes_down": a["records"][-1]["bytes_down"],
                          "wire_bytes_up": a["records"][-1]["bytes_up"]}
        assert_same_run(a, b, server_weights(*engine_run), server_weights(out, ck))


def test_a_second_writer_is_refused_before_anything_starts(tmp_path):
    from emfl.nn.runner import HistoryLock

    out, ck = tmp_path / "flower.json", tmp_path / "ck"
    with HistoryLock(out):  # another run writes this history now
        r = subprocess.run(_command(out, ck, "--resume"), env={**os.environ, "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "another run is writing" in r.stderr and "--resume" in r.stderr
    assert "Flower's logs" not in r.stderr  # refused before a deployment was started
