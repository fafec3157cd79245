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
import torch

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


@pytest.mark.numeric
def test_client_memory_survives_every_handover_between_the_engine_and_the_deployment(tmp_path, capsys, monkeypatch):
    # SCAFFOLD: each client keeps its control variate c_i (its memory) between the rounds it takes
    # part in; 5 clients, 4 a round, so that every round brings back clients of the rounds before.
    # One run, continued four times: round 1 by the engine (c_i in its checkpoint), round 2 by a
    # deployment (the engine's c_i handed to the nodes), round 3 by a deployment whose workers sit
    # behind Flower's ClientApp processes (the socket worker, reading what the first one kept),
    # round 4 by the engine again (c_i read from the nodes' folder).  It must equal 4 engine rounds.
    from emfl.__main__ import main

    flags = ["--algo", "scaffold", "--task", "bits", "--model", "mlp-tanh", "--eval-every", "1",
             "--clients-per-round", "4", "--num-shards", "5", "--precision", "float64"]
    out, ck = tmp_path / "chain.json", tmp_path / "ck"

    def step(command, rounds, *more):
        assert main([command, *flags, "--rounds", str(rounds), *more, "--checkpoint-dir", str(ck), "--out", str(out),
                     "--quiet"]) == 0

    step("run", 1)
    step("flower", 2, "--supernodes", "2", "--resume")
    assert json.loads(out.read_text())["transport"]["node_worker"] in ("executor", "socket")
    monkeypatch.setenv("EMFL_FLOWER_WORKER", "socket")
    step("flower", 3, "--supernodes", "2", "--resume")
    assert json.loads(out.read_text())["transport"]["node_worker"] == "socket"
    monkeypatch.delenv("EMFL_FLOWER_WORKER")
    step("run", 4, "--resume")
    engine = tmp_path / "engine.json"
    assert main(["run", *flags, "--rounds", "4", "--checkpoint-dir", str(ck), "--out", str(engine), "--quiet"]) == 0
    a, b = json.loads(engine.read_text()), json.loads(out.read_text())
    assert [r["round"] for r in b["records"]] == [r["round"] for r in a["records"]] == [1, 2, 3, 4]
    for ra, rb in zip(a["records"], b["records"]):
        assert set(ra) == set(rb)
        for k in ("global_acc", "local_acc", "train_loss", "bytes_down", "bytes_up"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-10, abs=1e-12), (ra["round"], k)
    wa, wb = server_weights(engine, ck), server_weights(out, ck)
    assert wa.dtype == torch.float64 and torch.allclose(wa, wb, atol=1e-10, rtol=0)


def test_an_unknown_node_worker_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EMFL_FLOWER_WORKER", "threads")
    config = make_config("fedavg", task="bits", model="mlp-tanh", rounds=1)
    with pytest.raises(FlowerError, match="EMFL_FLOWER_WORKER must be auto, executor or socket; got 'threads'"):
        deploy(config, tmp_path / "x.json", supernodes=1, checkpoint_dir=tmp_path / "ck")
    assert not (tmp_path / "x.json").exists()


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


def _flower_home(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"FLWR_HOME="):
            return item[len(b"FLWR_HOME="):].decode()
    return None


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
    import re

    home = re.search(r"Flower's logs: (\S+?)\)", err).group(1)  # this deployment's FLWR_HOME
    assert not any(_flower_home(p) == home for p in _flower_processes() - before)


def test_a_supernode_that_dies_ends_the_run_with_a_clear_error(tmp_path):
    seen = {}

    def kill_one(dep):
        seen["dep"] = dep
        os.kill(dep.pids["supernode1"], signal.SIGKILL)

    config = make_config("fedavg", task="bits", model="mlp-tanh", rounds=2, eval_every=1, clients_per_round=4)
    with pytest.raises(FlowerError, match="supernode1 stopped"):
        deploy(config, tmp_path / "x.json", supernodes=2, checkpoint_dir=tmp_path / "ck", on_started=kill_one)
    assert seen["dep"].left_over() == []  # no orphan: SuperLink, SuperNodes, ServerApp, ClientApps all gone


def _second_loopback() -> str:
    """127.0.0.2 where it can be bound (Linux), else 127.0.0.1: a SuperLink on an address of its own."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Test certificates for the SuperLink's address (and 127.0.0.1, where its ServerApp dials it),
    two registered node keys and one that is not."""
    from emfl.flower.security import make_certificates, make_node_key

    folder = tmp_path_factory.mktemp("keys")
    host = _second_loopback()
    make_certificates(folder, [host, "127.0.0.1"])
    for name in ("node0", "node1"):
        make_node_key(folder, name)
    make_node_key(folder / "stranger", "node9")
    return folder, host


def test_a_tls_deployment_of_three_roles_with_node_authentication_writes_the_engines_run(tmp_path, keys):
    """What a user types on three machines, here on one: the server's role (a SuperLink on an
    address of its own, TLS, the two nodes' public keys) and two `--supernode` roles, each with
    the CA's certificate and its own private key."""
    import subprocess

    from emfl.__main__ import main
    from emfl.flower.deploy import free_port

    folder, host = keys
    flags = ["--task", "bits", "--model", "mlp-tanh", "--eval-every", "1", "--clients-per-round", "4",
             "--precision", "float64", "--rounds", "2", "--quiet"]
    out, ck = tmp_path / "tls.json", tmp_path / "ck"
    link = f"{host}:{free_port(host)}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "emfl", "flower", "--algo", "fedsparse-mid", *flags,
                               "--superlink", link, "--certificates", str(folder), "--supernodes", "2",
                               "--checkpoint-dir", str(ck), "--out", str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    nodes = []
    try:
        said = []  # the nodes start once the server has registered their keys and says it waits for them
        for line in server.stderr:
            said.append(line)
            if "waiting for 2 SuperNodes" in line:
                break
        assert any("waiting for 2 SuperNodes" in line for line in said), "".join(said)
        for i in range(2):
            nodes.append(subprocess.Popen([sys.executable, "-m", "emfl", "flower", "--supernode", "--superlink", link,
                                           "--partition", str(i), "--supernodes", "2", "--certificates",
                                           str(folder / "ca.pem"), "--node-key", str(folder / f"node{i}.key")],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        stdout, stderr = server.communicate(timeout=600)
        assert server.returncode == 0, stderr
        assert "--supernode --superlink" in "".join(said)  # it said how to start them
        for node in nodes:
            assert node.poll() is None  # a node serves until stopped
    finally:
        for p in [server, *nodes]:
            if p.poll() is None:
                p.terminate()
        codes = [p.wait(timeout=60) for p in nodes]
    assert codes == [128 + signal.SIGTERM] * 2
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["transport"]["supernodes"] == 2
    assert main(["run", "--algo", "fedsparse-mid", *flags, "--checkpoint-dir", str(ck),
                 "--out", str(tmp_path / "engine.json")]) == 0
    a = json.loads((tmp_path / "engine.json").read_text())
    assert_same_run(a, doc, server_weights(tmp_path / "engine.json", ck), server_weights(out, ck))


def test_a_supernode_whose_key_is_not_registered_is_refused(tmp_path, keys):
    folder, host = keys
    config = make_config("fedavg", task="bits", model="mlp-tanh", rounds=1, clients_per_round=2)
    with pytest.raises(FlowerError, match=r"supernode1 stopped \(exit code \d+\) during the run: the SuperLink refused it "
                                          r"\(Flower's error 2004") as err:
        deploy(config, tmp_path / "x.json", supernodes=2, checkpoint_dir=tmp_path / "ck", superlink=f"{host}:0",
               certificates=folder, public_keys=[folder / "node0.pub", folder / "node1.pub"], local_nodes=2,
               node_keys=[folder / "node0.key", folder / "stranger" / "node9.key"], start_timeout=120)
    assert "--resume" in str(err.value)
    assert not (tmp_path / "x.json").exists()  # refused before the run was submitted


@pytest.mark.parametrize("flags,said", [
    (["--superlink", "10.1.2.3:9093", "--insecure"], "only allowed on a loopback"),
    (["--superlink", "10.1.2.3:9093"], "needs --certificates"),
    (["--superlink", "127.0.0.1:9093"], "or --insecure on a loopback"),
    (["--superlink", "nonsense"], "HOST:PORT"),
])
def test_off_loopback_a_superlink_needs_tls_and_node_keys(tmp_path, capsys, flags, said):
    from emfl.__main__ import main

    assert main(["flower", "--algo", "fedavg", "--task", "bits", "--rounds", "1", *flags,
                 "--out", str(tmp_path / "x.json"), "--quiet"]) == 2
    assert said in capsys.readouterr().err


def test_a_superlink_off_loopback_without_node_keys_is_refused(tmp_path, keys, capsys):
    from emfl.flower.security import make_certificates

    from emfl.__main__ import main

    folder = tmp_path / "certs"
    make_certificates(folder, ["10.1.2.3", "127.0.0.1"])  # no node*.pub beside them
    assert main(["flower", "--algo", "fedavg", "--task", "bits", "--rounds", "1", "--superlink", "10.1.2.3:9093",
                 "--certificates", str(folder), "--out", str(tmp_path / "x.json"), "--quiet"]) == 2
    assert "SuperNode authentication" in capsys.readouterr().err


def test_the_supernodes_waits_are_capped_in_its_own_process():
    # Flower 1.42's SuperNode sleeps 3 s when it finds no message and checks for its ClientApp's
    # reply every 0.5 s; emfl.flower.supernode caps both, in the SuperNode's process only; and an
    # object pull that finds its object missing retries after 20 ms, not Flower's 1 s
    import inspect
    import subprocess

    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source  # the waits that are capped
    probe = ("import time; from emfl.flower.supernode import patch; assert patch(0.05); "
             "from flwr.supernode import start_client_internal as loop; t = time.monotonic(); loop.time.sleep(3); "
             "print(round(time.monotonic() - t, 3), loop.time.monotonic() > 0, time.sleep is loop.time.sleep)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    waited, clock, same = r.stdout.split()
    assert r.returncode == 0 and float(waited) < 0.5 and clock == "True" and same == "False", r.stderr
    assert loop.time.sleep is __import__("time").sleep  # this process's Flower is untouched
    pull = ("import time; from emfl.flower.supernode import quick_pulls; QUICK = quick_pulls() if FAST else []\n"
            "from flwr.supercore.inflatable import inflatable_utils as u\n"
            "from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError\n"
            "tries = []\n"
            "def fn(i):\n"
            "    tries.append(i)\n"
            "    if len(tries) < 2: raise ObjectUnavailableError(i)\n"
            "    return b'x'\n"
            "t = time.monotonic(); got = u.pull_objects(['a'], fn, initial_backoff=1.0, backoff_cap=10)\n"
            "print(round(time.monotonic() - t, 3), len(tries), got == {'a': b'x'}, len(QUICK))")
    timings = {}
    for fast in (True, False):
        r = subprocess.run([sys.executable, "-c", f"FAST = {fast}\n" + pull], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        took, tries, ok, changed = r.stdout.split()
        assert tries == "2" and ok == "True", r.stdout
        timings[fast] = float(took)
        assert int(changed) == (3 if fast else 0)  # inflatable_utils, the SuperNode's loop, the ServerApp's grid
    assert timings[True] < 0.3 < 0.7 < timings[False]  # 20 ms (+-20 %) against Flower's 1 s (+-20 %)


def test_the_clientapp_a_supernode_starts_per_message_imports_little():
    # behind the socket worker Flower starts a ClientApp process for every message: it must not
    # import torch, emfl's engine, or the SuperNode's and SuperLink's modules (seconds each time)
    import subprocess

    probe = ("import sys, emfl.flower.clientapp; "
             "print(sorted(m for m in ('torch', 'emfl.nn.engine', 'flwr.supernode.start_client_internal', "
             "'flwr.superlink.grid.http_grid', 'sqlalchemy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
