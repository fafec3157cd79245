"""A real Flower deployment on one machine: a SuperLink and ``N`` SuperNodes on 127.0.0.1, the run
submitted with ``flwr run``, everything shut down afterwards.

What :func:`deploy` does is what a user types in ``N + 2`` terminals (README, "Running on Flower"):

1. ``flower-superlink --insecure --host 127.0.0.1 --port P`` (one HTTP port carries the Fleet, the
   Control and the ServerAppIo APIs in flwr 1.4x);
2. for each node ``i``: ``flower-supernode --insecure --superlink 127.0.0.1:P --host 127.0.0.1
   --port Q_i --node-config "partition-id=i num-partitions=N"``;
3. a Flower App folder whose ``pyproject.toml`` names ``emfl.flower.apps:server_app`` and
   ``emfl.flower.apps:client_app``, a connection ``[superlink.emfl]`` in ``$FLWR_HOME/config.toml``,
   and ``flwr run APP emfl --run-config 'emfl-settings="SETTINGS.json"'``.

The ServerApp (in the SuperLink's ``flwr-serverapp`` process) writes the run JSON and checkpoints
exactly as ``python -m emfl run`` does.  Everything lives in a temporary ``FLWR_HOME``; every process
is started in its own session and stopped (SIGTERM, then SIGKILL) however the run ends.  A
SuperNode that dies, a port that is taken or a ServerApp that fails ends :func:`deploy` with a
:class:`~emfl.flower.FlowerError` that says what happened; finished rounds stay in the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from emfl.flower.errors import FlowerError, require_flower

__all__ = ["deploy", "app_pyproject", "free_port", "Deployment"]

CONNECTION = "emfl"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
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
clientapp = "emfl.flower.apps:client_app"

[tool.flwr.app.config]
emfl-settings = ""
"""


class Deployment:
    """The processes of one deployment (SuperLink, SuperNodes) in a temporary ``FLWR_HOME``."""

    def __init__(self, home: Path):
        self.home = home
        self.procs: dict = {}  # name -> (Popen, log path)
        bindir = str(Path(sys.executable).parent)  # flower-superexec, flwr-serverapp, flwr-clientapp
        self.env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "FLWR_HOME": str(home),
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
        self.bindir = bindir

    def tool(self, name: str) -> str:
        path = shutil.which(name, path=self.bindir) or shutil.which(name)
        if path is None:
            raise FlowerError(f"{name} not found: install Flower into this environment (pip install -e '.[flower]')")
        return path

    def start(self, name: str, args: list) -> subprocess.Popen:
        log = self.home / f"{name}.log"
        with open(log, "wb") as fh:
            p = subprocess.Popen([self.tool(args[0]), *args[1:]], stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                 cwd=self.home, start_new_session=True)
        self.procs[name] = (p, log)
        return p

    def log(self, name: str) -> str:
        return self.procs[name][1].read_text(errors="replace")

    def check_alive(self) -> None:
        """Raise if a process of the deployment has stopped."""
        for name, (p, log) in self.procs.items():
            if p.poll() is not None:
                text = self.log(name)
                if "address already in use" in text:
                    raise FlowerError(f"{name} could not listen: a port it was given is taken (log: {log}); "
                                      "choose another --port (or 0 for a free one)")
                tail = "\n".join(text.strip().splitlines()[-5:])
                raise FlowerError(f"{name} stopped (exit code {p.returncode}) during the run; its log ends:\n{tail}")

    def flwr(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
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

    def left_over(self) -> list:
        """Processes (other than this one) started with this deployment's ``FLWR_HOME``."""
        needle = f"FLWR_HOME={self.home}".encode()
        found = []
        for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
                state = Path(f"/proc/{d}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in env and state != b"Z":
                found.append(int(d))
        return found

    def shutdown(self) -> None:
        """SIGTERM to every process group (SuperNodes first), SIGKILL after 15 s; then whatever
        else runs with this ``FLWR_HOME`` (the SuperLink's detached ``flower-superexec``)."""
        order = [n for n in self.procs if n != "superlink"] + [n for n in self.procs if n == "superlink"]
        for name in order:
            p, _ = self.procs[name]
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 15
        for name in order:
            p, _ = self.procs[name]
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        end = time.monotonic() + 10
        left = self.left_over()
        while left and time.monotonic() < end:
            time.sleep(0.3)
            left = self.left_over()
        for pid in left:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                    time.sleep(1)
                except ProcessLookupError:
                    break


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def deploy(config, out, supernodes: int = 2, data_dir=None, resume: bool = False, checkpoint_dir=None,
           port: int = 0, round_timeout: float = 600, threads: int = 1, keep_logs: bool = False,
           run_timeout: float = 3600, on_started=None) -> dict:
    """Run ``config`` on a SuperLink and ``supernodes`` SuperNodes on 127.0.0.1 (``port``: the
    SuperLink's; 0 picks a free one) and return the run JSON it wrote to ``out``.  ``on_started(dep)``
    is called once the run is submitted (tests use it to stop a SuperNode)."""
    require_flower()
    if supernodes < 1:
        raise FlowerError(f"--supernodes must be at least 1; got {supernodes}")
    out = Path(out).expanduser().resolve()
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
                    "threads": threads}
        (home / "settings.json").write_text(json.dumps(settings, indent=1))
        link = port or free_port()
        dep.start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
                                "--disable-runtime-dependency-installation"])
        dep.wait("the SuperLink", lambda: _healthy(link), 120)
        (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                          f'address = "127.0.0.1:{link}"\ninsecure = true\n')
        for i in range(supernodes):
            dep.start(f"supernode{i}", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                                        "--node-config", f"partition-id={i} num-partitions={supernodes}",
                                        "--host", "127.0.0.1", "--port", str(free_port()), "--max-wait-time", "60"])
        dep.wait(f"{supernodes} SuperNodes to connect",
                 lambda: dep.log("superlink").count("Activated node_id") >= supernodes, 180)
        r = dep.flwr("run", str(app), CONNECTION, "--run-config", f'emfl-settings="{home / "settings.json"}"',
                     "--format", "json")
        if r.returncode != 0:
            raise FlowerError(f"flwr run failed (exit code {r.returncode}): {(r.stdout + r.stderr).strip()[-800:]}")
        run_id = json.loads(r.stdout)["run-id"]
        if on_started is not None:
            on_started(dep)
        dep.wait("the run to finish", lambda: any("Finished task" in line and f"of run {run_id}" in line
                                                  for line in dep.log("superlink").splitlines()),
                 run_timeout, poll=0.5)
        status = dep.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        info = json.loads(status.stdout)["runs"][0]
        if info["status"] != "finished:completed":
            raise FlowerError(f"the Flower run ended as {info['status']}: {info.get('status-details', '')}; "
                              f"what finished is in {out} and its checkpoint (--resume continues)")
        with open(out) as f:
            doc = json.load(f)
        ok = True
        return doc
    except FlowerError as err:
        raise FlowerError(f"{err} (Flower's logs: {home})") from None
    finally:
        dep.shutdown()
        if ok and not keep_logs:
            shutil.rmtree(home, ignore_errors=True)
