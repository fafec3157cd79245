"""emfl's algorithms on Flower (emfl.flower): the simulation and a real deployment (a SuperLink and
two SuperNodes on 127.0.0.1) give the server weights and the byte counts of `emfl run`.

Needs the extra (`pip install -e '.[flower]'`; `./dev test` installs it)."""

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install -e '.[flower]'")

from emfl.flower import FlowerError  # noqa: E402
from emfl.flower.apps import simulate  # noqa: E402
from emfl.flower.deploy import deploy  # noqa: E402
from emfl.nn.config import make_config  # noqa: E402
from emfl.nn.engine import Engine  # noqa: E402
from emfl.nn.runner import checkpoint_path, run  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from nn_helpers import tiny_federation  # noqa: E402

from emfl.nn.cifar import TARBALL  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAS_CIFAR = (DATA / TARBALL).exists()


@pytest.fixture(autouse=True)
def one_thread():
    """Every process of these runs computes on one torch thread (the Flower nodes do, by
    ``threads``), so that the engine and Flower do the same float operations in the same order:
    equal to the last bit, whatever OMP_NUM_THREADS says."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def server_weights(out, ckpt_dir) -> torch.Tensor:
    return torch.load(checkpoint_path(out, ckpt_dir), weights_only=True)["server"]["w"]


def assert_same_run(a: dict, b: dict, wa: torch.Tensor, wb: torch.Tensor) -> None:
    """Same records (every field but the seconds), same bytes, same server weights."""
    assert len(a["records"]) == len(b["records"]) > 0
    for ra, rb in zip(a["records"], b["records"]):
        assert set(ra) == set(rb)
        for k in ra:
            if k == "seconds":
                continue
            if isinstance(ra[k], float):
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), k
            else:
                assert rb[k] == ra[k], k  # counts and bytes: exactly
    last = a["records"][-1]
    t = b["transport"]
    assert t["name"] == "flower"
    # what went over Flower's wire is what the engine counts
    assert (t["wire_bytes_down"], t["wire_bytes_up"]) == (last["bytes_down"], last["bytes_up"])
    assert t["wire_first_round"] == 1  # every round of the run went over Flower
    assert torch.allclose(wa, wb, atol=1e-6, rtol=0)


def test_waves_give_each_node_one_client_at_a_time():
    from emfl.flower.apps import node_for, waves

    assert [node_for(s, [30, 10, 20]) for s in range(5)] == [10, 20, 30, 10, 20]  # s mod 3, ids sorted
    sent = [(5, "a"), (7, "b"), (5, "c"), (5, "d"), (7, "e")]
    assert waves(sent, node=lambda m: m[0]) == [[(5, "a"), (7, "b")], [(5, "c"), (7, "e")], [(5, "d")]]


def test_a_simulation_needs_a_supernode(tmp_path):
    with pytest.raises(FlowerError, match="--supernodes must be at least 1; got 0"):
        simulate(make_config(task="cifar10", rounds=1), tmp_path / "run.json", supernodes=0)
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize("algo", ["fedavg", "fedsparse-mid", "feddrop", "scaffold"])
def test_simulation_gives_the_engines_run_on_generated_data(tmp_path, algo):
    # 6 clients of 48 random images, 4 a round, 3 rounds: dense (FedAvg), group-sparse with
    # thresholds (FedSparse), sub-models drawn per client (FedDrop) and client memory (SCAFFOLD)
    data = tiny_federation(clients=6, n=48, m=8)
    config = make_config(algo, task="cifar10", rounds=3, clients_per_round=4, eval_every=1, device="cpu")
    ck = tmp_path / "ck"
    a = run(config, tmp_path / "engine.json", data=data, progress=False, checkpoint_dir=ck)
    b = simulate(config, tmp_path / "flower.json", supernodes=2, data=data, checkpoint_dir=ck)
    wa, wb = server_weights(tmp_path / "engine.json", ck), server_weights(tmp_path / "flower.json", ck)
    assert_same_run(a, b, wa, wb)
    # the run moved the server: a transport that delivered nothing would leave the first weights
    assert float((wb - Engine(config, data).w).abs().max()) > 1e-4


@pytest.mark.skipif(not HAS_CIFAR, reason=f"CIFAR-10 is not in {DATA} (the generated-data tests above still run)")
@pytest.mark.parametrize("algo", ["fedavg", "fedsparse-mid"])
def test_simulation_gives_the_engines_run_on_cifar10(tmp_path, algo):
    config = make_config(algo, task="cifar10", rounds=3, eval_every=1, device="cpu")  # 10 of 100 clients a round
    ck = tmp_path / "ck"
    a = run(config, tmp_path / "engine.json", data_dir=DATA, progress=False, checkpoint_dir=ck)
    b = simulate(config, tmp_path / "flower.json", supernodes=2, data_dir=str(DATA), checkpoint_dir=ck)
    assert_same_run(a, b, server_weights(tmp_path / "engine.json", ck), server_weights(tmp_path / "flower.json", ck))
    assert b["records"][-1]["bytes_up"] < b["records"][-1]["bytes_down"] or algo == "fedavg"


def test_deployment_two_supernodes_writes_the_engines_run(tmp_path, capsys):
    # the 12-bit patterns (generated, no files): every ClientApp process Flower starts loads its data
    # in milliseconds; benchmarks/flower_overhead.py runs the deployment on CIFAR-10
    from emfl.__main__ import main

    flags = ["--task", "bits", "--model", "mlp-tanh", "--eval-every", "1", "--clients-per-round", "4"]
    out, ck = tmp_path / "flower.json", tmp_path / "ck"
    assert main(["flower", "--algo", "fedsparse-mid", "--rounds", "2", "--supernodes", "2", *flags,
                 "--checkpoint-dir", str(ck), "--out", str(out), "--quiet"]) == 0
    assert "fedsparse-mid on bits: round 2" in capsys.readouterr().out
    assert main(["run", "--algo", "fedsparse-mid", "--rounds", "2", *flags, "--checkpoint-dir", str(ck),
                 "--out", str(tmp_path / "engine.json"), "--quiet"]) == 0
    a, b = json.loads((tmp_path / "engine.json").read_text()), json.loads(out.read_text())
    assert b["transport"]["mode"] == "deployment" and b["transport"]["supernodes"] == 2
    assert_same_run(a, b, server_weights(tmp_path / "engine.json", ck), server_weights(out, ck))


def _flower_processes() -> set:
    """Processes started with a FLWR_HOME of emfl's deployments."""
    found = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                env = Path(f"/proc/{d}/environ").read_bytes()
            except OSError:
                continue
            if b"FLWR_HOME=" in env and b"emfl-flower-" in env:
                found.add(int(d))
    return found


def test_a_taken_port_is_a_clear_error_and_leaves_no_process(tmp_path, capsys):
    from emfl.__main__ import main

    before = _flower_processes()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["flower", "--algo", "fedavg", "--rounds", "1", "--port", str(port), "--task", "bits",
                     "--model", "mlp-tanh", "--out", str(tmp_path / "x.json"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "superlink could not listen" in err and "taken" in err
    assert _flower_processes() <= before


def test_a_supernode_that_dies_ends_the_run_with_a_clear_error(tmp_path):
    seen = {}

    def kill_one(dep):
        seen["dep"] = dep
        p, _ = dep.procs["supernode1"]
        os.killpg(p.pid, signal.SIGKILL)

    config = make_config("fedavg", task="bits", model="mlp-tanh", rounds=2, eval_every=1, clients_per_round=4)
    with pytest.raises(FlowerError, match="supernode1 stopped"):
        deploy(config, tmp_path / "x.json", supernodes=2, checkpoint_dir=tmp_path / "ck", on_started=kill_one)
    assert seen["dep"].left_over() == []  # no orphan: SuperLink, SuperNodes, ServerApp, ClientApps all gone
