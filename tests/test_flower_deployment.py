"""emfl's algorithms in a real Flower deployment (a SuperLink and two SuperNodes on 127.0.0.1):
the engine's run, and clear errors with nothing left running when a port is taken or a node dies.

Needs the extra (`pip install -e '.[flower]'`; `./dev test` installs it)."""

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install -e '.[flower]'")

from emfl.flower import FlowerError  # noqa: E402
from emfl.flower.deploy import deploy  # noqa: E402
from emfl.nn.config import make_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from flower_helpers import assert_same_run, one_thread, server_weights  # noqa: E402,F401


@pytest.mark.numeric
@pytest.mark.parametrize("algo,more", [("fedsparse-mid", []), ("fedspa", ["--num-shards", "5"])])
def test_deployment_two_supernodes_writes_the_engines_run(tmp_path, capsys, algo, more):
    # the 12-bit patterns (generated, no files): every ClientApp process Flower starts loads its data
    # in milliseconds; benchmarks/flower_overhead.py runs the deployment on CIFAR-10.  FedSpa: 8
    # draws of 5 clients, so that some client comes back with the mask it moved, which its node
    # kept and the server remembered from its reply
    from emfl.__main__ import main

    flags = ["--task", "bits", "--model", "mlp-tanh", "--eval-every", "1", "--clients-per-round", "4",
             "--precision", "float64", *more]
    out, ck = tmp_path / "flower.json", tmp_path / "ck"
    assert main(["flower", "--algo", algo, "--rounds", "2", "--supernodes", "2", *flags,
                 "--checkpoint-dir", str(ck), "--out", str(out), "--quiet"]) == 0
    assert f"{algo} on bits: round 2" in capsys.readouterr().out
    assert main(["run", "--algo", algo, "--rounds", "2", *flags, "--checkpoint-dir", str(ck),
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
