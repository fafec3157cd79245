"""A real Flower deployment: a SuperLink, SuperNodes and their workers, the run submitted with
``flwr run``, everything stopped afterwards, whatever ends it.

Three roles, as ``python -m emfl flower`` offers them (README, "Running on Flower"):

* :func:`deploy` with no ``superlink``: everything on this machine, on 127.0.0.1, plain gRPC;
* :func:`deploy` with ``superlink="HOST:PORT"``: the server's machine.  The SuperLink listens on
  ``HOST:PORT`` with TLS and admits only the SuperNodes whose public keys it was given
  (``--insecure`` only on a loopback address); the run starts once ``supernodes`` nodes have
  connected, from this machine (``local_nodes``) or others (:func:`supernode`);
* :func:`supernode`: a machine that holds clients' data: the node's worker and its SuperNode,
  dialling the SuperLink with the CA's certificate and the node's private key, until stopped.

What runs, per machine, and what a user would type in as many terminals:

1. ``flower-superlink --host HOST --port P ...`` (one HTTP port carries the Fleet, Control and
   ServerAppIo APIs in flwr 1.4x; its ``flower-superexec`` starts the ``flwr-serverapp`` process
   in which :data:`emfl.flower.apps.server_app` runs the runner's loop);
2. per node: ``python -m emfl.flower.node --socket S`` (the worker: imports torch and emfl and
   reads the data once) and ``flower-supernode ... --node-config "partition-id=i num-partitions=N
   emfl-node=S"``; for each message the SuperNode starts a ``flwr-clientapp`` process that runs
   :data:`emfl.flower.clientapp.client_app`, which hands the message to the worker;
3. a Flower App folder whose ``pyproject.toml`` names those two apps, a connection in
   ``$FLWR_HOME/config.toml`` and ``flwr run APP emfl --run-config run-config.toml`` (the run's
   settings as JSON text, so that they reach nodes on other machines).

Every process is started by a guard (:mod:`emfl.flower.guard`) that stops the whole process tree
when the command ends, however it ends (SIGTERM, SIGHUP, ``kill -9``).  A SuperNode, a worker or
the SuperLink that stops, and a ServerApp that dies, end the command within seconds with a
:class:`~emfl.flower.FlowerError` (exit code 2) that names ``--resume``; finished rounds stay in
the checkpoint.  A second command on a history another run is writing is refused before anything
starts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from emfl.flower import security
from emfl.flower.errors import FlowerError, require_flower
from emfl.flower.guard import GuardClient, GuardError, alive

__all__ = ["deploy", "supernode", "app_pyproject", "free_port", "Deployment", "STATUS_FILE"]

CONNECTION = "emfl"
STATUS_FILE = "serverapp.json"  # what the ServerApp writes into the deployment's folder: its pid, its error


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` nobody listens on now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def app_pyproject() -> str:
    """The Flower App: a ``pyproject.toml`` naming emfl's apps (the code is the installed emfl)."""
    return """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "emfl-flower-app"
version = "1.0.0"
description = "emfl's algorithms as a Flower App (the code is the installed emfl package)"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "emfl"

[tool.flwr.app.components]
serverapp = "emfl.flower.apps:server_app"
clientapp = "emfl.flower.clientapp:client_app"

[tool.flwr.app.config]
emfl-settings = ""
"""


def _environment(home: Path) -> dict:
    bindir = str(Path(sys.executable).parent)  # flower-superexec, flwr-serverapp, flwr-clientapp
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
            # a SuperNode's flower-superexec asks for the next ClientApp to start every second by default
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}


class Deployment:
    """The processes of one deployment (SuperLink, workers, SuperNodes), all in one guard's tree,
    with a temporary ``FLWR_HOME``."""

    def __init__(self, home: Path):
        self.home = home
        self.env = _environment(home)
        self.bindir = str(Path(sys.executable).parent)
        self.pids: dict = {}  # name -> pid
        self.guard = GuardClient()

    def tool(self, name: str) -> str:
        path = shutil.which(name, path=self.bindir) or shutil.which(name)
        if path is None:
            raise FlowerError(f"{name} not found: install Flower into this environment (pip install -e '.[flower]')")
        return path

    def start(self, name: str, args: list) -> int:
        argv = [self.tool(args[0]), *args[1:]] if args[0] != "python" else [sys.executable, *args[1:]]
        try:
            pid = self.guard.spawn(name, argv, env=self.env, cwd=self.home, log=self.home / f"{name}.log")
        except GuardError as err:
            raise FlowerError(str(err)) from None
        self.pids[name] = pid
        return pid

    def log(self, name: str) -> str:
        try:
            return (self.home / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        """Raise if a process of the deployment has stopped (or the guard itself)."""
        if not self.guard.alive():
            raise FlowerError("the deployment's guard stopped: the deployment is down; what finished is in the "
                              "checkpoint: continue with --resume")
        for name in self.pids:
            if name in self.guard.exited:
                code = self.guard.exited[name]
                text = self.log(name)
                if "address already in use" in text.lower():
                    raise FlowerError(f"{name} could not listen: a port it was given is taken (log: "
                                      f"{self.home / (name + '.log')}); choose another --port (or 0 for a free one)")
                raise FlowerError(f"{name} stopped (exit code {code}) during the run{_diagnosis(text)}; what finished "
                                  f"is in the checkpoint: continue with --resume. Its log ends:\n{_tail(text)}")

    def flwr(self, *args: str, timeout: float = 180):
        import subprocess

        return subprocess.run([self.tool("flwr"), *args], env=self.env, cwd=self.home, capture_output=True,
                              text=True, timeout=timeout)

    def wait(self, what: str, done, timeout: float, poll: float = 0.3):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.check_alive()
            found = done()
            if found:
                return found
            time.sleep(poll)
        raise FlowerError(f"timed out after {timeout:g} s waiting for {what} (logs in {self.home})")

    def tree(self) -> list:
        """Every process of the deployment now (the guard's tree)."""
        return self.guard.tree()

    def left_over(self) -> list:
        """Processes of the deployment still running (after :meth:`shutdown`: none)."""
        return [p for p in list(self.pids.values()) + self.tree() if alive(p)]

    def shutdown(self) -> None:
        """Stop every process of the deployment: SIGTERM, SIGKILL after a grace period."""
        self.guard.stop()


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _diagnosis(log: str) -> str:
    """Why a SuperNode stopped, when its log says so: its key refused, the SuperLink's
    certificate not verified."""
    if "2004" in log or "Failed to activate SuperNode" in log:
        return (": the SuperLink refused it (Flower's error 2004, Failed to activate SuperNode): its public key "
                "is not registered there (give it to the SuperLink with --public-keys)")
    if "2001" in log:
        return ": the SuperLink requires SuperNode authentication and this node has no key (--node-key)"
    if "CERTIFICATE_VERIFY_FAILED" in log or "handshake" in log.lower():
        return (": it could not verify the SuperLink's TLS certificate (CERTIFICATE_VERIFY_FAILED): give it the "
                "CA certificate that signed the SuperLink's (--certificates ca.pem)")
    return ""


def _healthy(address: str, tls: dict | None) -> bool:
    """Whether the SuperLink answers on its health endpoint (HTTPS, checked against the CA, with TLS)."""
    context = None
    if tls is not None:
        import ssl

        context = ssl.create_default_context(cafile=tls["ca"])
    try:
        with urllib.request.urlopen(f"{'https' if tls else 'http'}://{address}/health", timeout=1, context=context) as r:
            return r.status == 200
    except OSError:
        return False


def _run_config(settings: dict, path: Path) -> Path:
    """The run config ``flwr run`` sends: the settings as JSON text (a TOML basic string)."""
    path.write_text(f"emfl-settings = {json.dumps(json.dumps(settings, sort_keys=True))}\n")
    return path


def _refuse_second_writer(out: Path) -> None:
    """Refuse to start while another run writes ``out`` (it holds its lock)."""
    from emfl.nn.runner import HistoryLock, RunError

    try:
        with HistoryLock(out):
            pass
    except RunError as err:
        raise FlowerError(f"{err}; once it has ended, --resume continues from its checkpoint") from None


def _tls_files(certificates) -> dict | None:
    """``{"ca", "server", "server_key"}`` in the folder ``certificates`` (what ``emfl flower-keys``
    writes), or None."""
    if certificates is None:
        return None
    folder = Path(certificates).expanduser()
    files = {"ca": folder / "ca.pem", "server": folder / "server.pem", "server_key": folder / "server.key"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FlowerError(f"--certificates {folder}: missing {', '.join(missing)} (make test ones with "
                          f"{security.KEYS_COMMAND})")
    return {k: str(v.resolve()) for k, v in files.items()}


def deploy(config, out, supernodes: int = 2, data_dir=None, resume: bool = False, checkpoint_dir=None,
           port: int = 0, round_timeout: float = 600, threads: int = 1, keep_logs: bool = False,
           run_timeout: float | None = None, on_started=None, superlink: str | None = None, certificates=None,
           public_keys=(), local_nodes: int | None = None, node_keys=(), insecure: bool = False,
           start_timeout: float = 600) -> dict:
    """Run ``config`` on a SuperLink and ``supernodes`` SuperNodes and return the run JSON it wrote
    to ``out``.

    ``superlink``: ``HOST:PORT`` the SuperLink listens on (default: 127.0.0.1 and ``port``, 0 for a
    free one); off a loopback address it needs ``certificates`` (a folder with ``ca.pem``,
    ``server.pem``, ``server.key``) and the ``public_keys`` of the SuperNodes it admits.
    ``local_nodes``: how many of the SuperNodes start here (default: all without ``superlink``,
    none with it); ``node_keys``: their private keys (with ``public_keys``).  ``on_started(dep)``
    is called once the run is submitted (tests use it to stop a process)."""
    require_flower()
    if supernodes < 1:
        raise FlowerError(f"--supernodes must be at least 1; got {supernodes}")
    out = Path(out).expanduser().resolve()
    _refuse_second_writer(out)
    tls = _tls_files(certificates)
    public_keys = [Path(k).expanduser().resolve() for k in public_keys]
    node_keys = [Path(k).expanduser().resolve() for k in node_keys]
    if superlink is None:
        host, link_port = "127.0.0.1", port or free_port()
        insecure = tls is None
    else:
        try:
            host, link_port = security.split_address(superlink)
        except ValueError as err:
            raise FlowerError(f"--superlink: {err}") from None
        if link_port == 0:
            link_port = free_port(host)
        if tls is None and not insecure:
            raise FlowerError(f"--superlink {superlink} needs --certificates (TLS; test ones: "
                              f"{security.KEYS_COMMAND}), or --insecure on a loopback address")
    if local_nodes is None:
        local_nodes = supernodes if superlink is None else 0
    if node_keys and len(node_keys) != local_nodes:
        raise FlowerError(f"{len(node_keys)} node keys for {local_nodes} SuperNodes on this machine: give one each")
    try:
        security.check_transport(host, insecure and tls is None, tls, bool(public_keys))
        link_args = security.superlink_args(host, link_port, tls, node_auth=bool(public_keys))
    except ValueError as err:
        raise FlowerError(str(err)) from None
    address = security.join_address({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), link_port)
    home = Path(tempfile.mkdtemp(prefix="emfl-flower-"))
    dep = Deployment(home)
    ok = False
    try:
        app = home / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(app_pyproject())
        settings = {"config": config.to_dict(), "out": str(out),
                    "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None,
                    "resume": resume, "checkpoint_dir": str(Path(checkpoint_dir).expanduser().resolve())
                    if checkpoint_dir else None, "supernodes": supernodes, "round_timeout": round_timeout,
                    "threads": threads, "status": str(home / STATUS_FILE),
                    "waves": False,  # every node has a worker, which keeps its clients' memory
                    "nodes_here": local_nodes == supernodes,  # ...where the server can see it
                    "node_worker": node_worker()}
        (home / "settings.json").write_text(json.dumps(settings, indent=1))
        dep.start("superlink", link_args)
        dep.wait("the SuperLink", lambda: _healthy(address, tls), 120)
        (home / "config.toml").write_text(security.connection_toml(CONNECTION, address, tls["ca"] if tls else None))
        if public_keys:
            try:
                security.register_nodes(public_keys, CONNECTION, env=dep.env)
            except FlowerError as err:
                raise FlowerError(f"registering the SuperNodes' public keys: {err}") from None
        for i in range(local_nodes):
            _start_node(dep, f"{i}", address, tls["ca"] if tls else None, node_keys[i] if node_keys else None,
                        f"partition-id={i} num-partitions={supernodes}", threads,
                        ["--settings", str(home / "settings.json")]
                        + (["--memory-dir", settings["checkpoint_dir"]] if settings["checkpoint_dir"] else []),
                        max_wait_time=60)
        if local_nodes < supernodes:
            print(f"SuperLink on {security.join_address(host, link_port)}: waiting for {supernodes - local_nodes} "
                  f"SuperNodes; on each node's machine: python -m emfl flower --supernode --superlink "
                  f"{security.join_address(host, link_port)} --partition I --supernodes {supernodes}"
                  + (" --certificates ca.pem --node-key nodeI.key" if tls else " --insecure")
                  + " --data-dir DATA", file=sys.stderr, flush=True)
        for i in range(local_nodes):  # each worker has read its data
            dep.wait(f"worker {i} to read its data", lambda i=i: "ready " in dep.log(f"worker{i}"), start_timeout)
        dep.wait(f"{supernodes} SuperNodes to connect",
                 lambda: dep.log("superlink").count("Activated node_id") >= supernodes,
                 start_timeout if superlink is None else 24 * 3600, poll=0.5)
        r = dep.flwr("run", str(app), CONNECTION, "--run-config", str(_run_config(settings, home / "run-config.toml")),
                     "--format", "json")
        if r.returncode != 0:
            raise FlowerError(f"flwr run failed (exit code {r.returncode}): {(r.stdout + r.stderr).strip()[-800:]}")
        run_id = json.loads(r.stdout)["run-id"]
        if on_started is not None:
            on_started(dep)
        status = _wait_for_server(dep, home / STATUS_FILE, out, run_timeout)
        info = _run_status(dep, run_id)
        doc = json.loads(out.read_text()) if out.exists() else {}
        if status.get("error") or not doc.get("complete"):
            why = status.get("error") or f"the Flower run ended as {info.get('status', 'unknown')}"
            raise FlowerError(f"{why}; what finished is in {out} and its checkpoint: continue with --resume")
        ok = True
        return doc
    except FlowerError as err:
        raise FlowerError(f"{err} (Flower's logs: {home})") from None
    finally:
        dep.shutdown()
        if ok and not keep_logs:
            shutil.rmtree(home, ignore_errors=True)


def node_worker() -> str:
    """How a node's worker takes its tasks: ``executor`` (the SuperNode's ClientApp executor, where
    this Flower allows: :func:`emfl.flower.node.executor_available`) or ``socket`` (behind a
    ClientApp process per message); ``EMFL_FLOWER_WORKER=socket`` chooses the second anywhere."""
    from emfl.flower.node import executor_available

    asked = os.environ.get("EMFL_FLOWER_WORKER", "auto")
    if asked not in ("auto", "executor", "socket"):
        raise FlowerError(f"EMFL_FLOWER_WORKER must be auto, executor or socket; got {asked!r}")
    if asked == "socket" or (asked == "auto" and not executor_available()):
        return "socket"
    if not executor_available():
        raise FlowerError("EMFL_FLOWER_WORKER=executor needs Flower's Runtime API (flwr 1.42); unset it to use "
                          "the socket worker")
    return "executor"


def _start_node(dep: Deployment, name: str, superlink: str, ca, key, node_config: str, threads: int, worker_args: list,
                max_wait_time=None) -> None:
    """A node: its worker and its SuperNode.  Where this Flower allows (:func:`emfl.flower.node.
    executor_available`), the SuperNode runs with ``--isolation process`` and the worker is its
    ClientApp executor (no process per message); elsewhere the SuperNode starts a ClientApp process
    per message, which hands the work to the worker over a Unix socket."""
    port = free_port()
    if node_worker() == "executor":
        args = security.supernode_args(superlink, ca, key, port=port, node_config=node_config,
                                       max_wait_time=max_wait_time)
        dep.start(f"supernode{name}", _quick(args + ["--isolation", "process"]))
        dep.start(f"worker{name}", ["python", "-m", "emfl.flower.node", "--runtime-api", f"127.0.0.1:{port}",
                                    "--threads", str(threads), *worker_args])
        return
    sock = str(dep.home / f"node{name}.sock")
    dep.start(f"worker{name}", ["python", "-m", "emfl.flower.node", "--socket", sock, "--threads", str(threads),
                                *worker_args])
    dep.start(f"supernode{name}", _quick(security.supernode_args(superlink, ca, key, port=port,
                                                                 max_wait_time=max_wait_time,
                                                                 node_config=f'{node_config} emfl-node="{sock}"')))


def _quick(args: list) -> list:
    """``flower-supernode ARGS`` as ``python -m emfl.flower.supernode ARGS``: Flower's SuperNode with
    its fixed 3 s and 0.5 s waits capped (:mod:`emfl.flower.supernode`)."""
    assert args[0] == "flower-supernode"
    return ["python", "-m", "emfl.flower.supernode", *args[1:]]


def _wait_for_server(dep: Deployment, status_file: Path, out: Path, run_timeout: float | None) -> dict:
    """Wait until the ServerApp's process has ended (it writes its pid to ``status_file`` when it
    starts, and its error if it fails); raise at once if a process of the deployment stops."""
    started = time.monotonic()

    def read():
        try:
            return json.loads(status_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    while True:
        dep.check_alive()
        status = read()
        if status is None and time.monotonic() - started > 300:
            raise FlowerError("the ServerApp did not start within 300 s (see flwr-serverapp in the SuperLink's log)")
        if status is not None and not alive(int(status["pid"])):
            time.sleep(0.2)  # a last write of the status file
            status = read() or status
            if not status.get("error") and not status.get("done"):
                doc = json.loads(out.read_text()) if out.exists() else {}
                last = doc.get("records", [{}])[-1].get("round", 0) if doc.get("records") else 0
                status["error"] = (f"the ServerApp (flwr-serverapp, pid {status['pid']}) stopped without finishing "
                                   f"(the history reaches round {last})")
            return status
        if run_timeout is not None and time.monotonic() - started > run_timeout:
            raise FlowerError(f"the run did not finish within {run_timeout:g} s")
        time.sleep(0.25)


def _run_status(dep: Deployment, run_id) -> dict:
    try:
        r = dep.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=30)
        return json.loads(r.stdout)["runs"][0]
    except Exception:  # the status is a detail of the message; the ServerApp's own file says what happened
        return {}


def supernode(superlink: str, partition: int, partitions: int, data_dir=None, certificates=None, node_key=None,
              insecure: bool = False, threads: int = 1, max_wait_time: float | None = None,
              checkpoint_dir=None) -> int:
    """Serve clients ``s`` with ``s mod partitions == partition`` from this machine: the node's
    worker and a SuperNode dialling ``superlink`` (``HOST:PORT``) with the CA certificate
    ``certificates`` (a ``ca.pem`` file, or a folder holding one) and the private key ``node_key``,
    until the SuperNode stops or the command is stopped; ``checkpoint_dir``: where the node keeps its
    clients' memory (:mod:`emfl.flower.memory`; default: emfl's checkpoint folder).  Returns the
    SuperNode's exit code."""
    require_flower()
    if not 0 <= partition < partitions:
        raise FlowerError(f"--partition must be in 0..{partitions - 1}; got {partition}")
    ca = None
    if certificates is None and not insecure:
        raise FlowerError("--supernode needs --certificates (the CA certificate that signed the SuperLink's) and "
                          "--node-key, or --insecure for a SuperLink on a loopback address")
    if certificates is not None:
        ca = Path(certificates).expanduser()
        ca = ca / "ca.pem" if ca.is_dir() else ca
        if not ca.is_file():
            raise FlowerError(f"no CA certificate at {ca}: give the ca.pem the SuperLink's certificate was signed with")
    try:  # the transport fits the address (--insecure on loopback only; TLS and a key elsewhere)
        security.supernode_args(superlink, str(ca) if ca else None, node_key)
    except ValueError as err:
        raise FlowerError(str(err)) from None
    home = Path(tempfile.mkdtemp(prefix="emfl-node-"))
    dep = Deployment(home)
    try:
        _start_node(dep, "", superlink, str(ca.resolve()) if ca else None,
                    str(Path(node_key).expanduser().resolve()) if node_key else None,
                    f"partition-id={partition} num-partitions={partitions}", threads,
                    (["--data-dir", str(Path(data_dir).expanduser().resolve())] if data_dir else [])
                    + (["--memory-dir", str(Path(checkpoint_dir).expanduser().resolve())] if checkpoint_dir else []),
                    max_wait_time=max_wait_time)
        dep.wait("the worker", lambda: "ready " in dep.log("worker"), 300)
        print(f"SuperNode {partition} of {partitions} dialling {superlink}; logs in {home}; Ctrl-C stops it",
              file=sys.stderr, flush=True)
        while True:
            for name in ("worker", "supernode"):
                if name in dep.guard.exited:
                    code = dep.guard.exited[name]
                    if name == "supernode" and code == 0:
                        return 0
                    text = dep.log(name)
                    raise FlowerError(f"this node's {name} stopped (exit code {code}){_diagnosis(text)}; its log "
                                      f"ends:\n{_tail(text)}")
            if not dep.guard.alive():
                raise FlowerError("this node's guard stopped")
            time.sleep(0.5)
    except FlowerError as err:
        raise FlowerError(f"{err} (logs: {home})") from None
    finally:
        dep.shutdown()
