"""The guard of a deployment: the one process that starts the deployment's processes and makes
sure none outlives the command that asked for them.

``python -m emfl flower`` starts ``python -m emfl.flower.guard`` with a pipe on its standard input,
then asks it (one JSON line each) to start the SuperLink, the nodes' workers and the SuperNodes.
The guard

* is a *child subreaper* (Linux): whatever its children start and leave behind (the SuperLink's
  ``flower-superexec`` and ``flwr-serverapp``, the SuperNodes' ``flwr-clientapp``) stays in its
  process tree instead of being handed to ``init``;
* sits in a session of its own and ignores SIGINT and SIGHUP, so a closed terminal reaches the
  command, which stops the deployment in order, and not the guard;
* stops its whole tree (SIGTERM, SIGKILL after a grace period, until no descendant is left) when
  the command asks (``{"op": "stop"}``), when it gets SIGTERM, and when its standard input ends:
  the pipe closes when the command dies, however it dies (``kill -9`` included);
* on request (``{"op": "watch", "pid": ...}``) notes the processes the command starts itself (Flower's
  simulation starts Ray's), with their start times, and stops them too;
* reports each child that ends as ``{"event": "exit", "name": ..., "pid": ..., "code": ...}`` on its
  standard output.

The tree is found by parent links (``/proc``, or ``psutil`` where there is no ``/proc``), never by
process names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

__all__ = ["descendants", "alive", "stop_tree", "Guard", "GuardClient", "GuardError", "main"]

GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def _parents() -> dict:
    """pid -> parent pid of every process (``/proc``; ``psutil`` elsewhere)."""
    table = {}
    if os.path.isdir("/proc"):
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                table[int(d)] = int(fields[1])
        return table
    import psutil

    for p in psutil.process_iter(["ppid"]):
        table[p.pid] = p.info["ppid"]
    return table


def descendants(pid: int) -> list:
    """Every process below ``pid`` in the process tree (children, their children, ...)."""
    children: dict = {}
    for p, pp in _parents().items():
        children.setdefault(pp, []).append(p)
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _signal(pids, sig) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(root: int, grace: float = GRACE, reap=None) -> None:
    """SIGTERM to every descendant of ``root``, SIGKILL to those still running ``grace`` seconds
    later; again until none is left (orphans a dying process leaves come back to a subreaper
    ``root``).  ``reap()`` collects ended children (a subreaper must, or they stay zombies)."""
    deadline = time.monotonic() + grace
    termed: set = set()
    while True:
        if reap is not None:
            reap()
        left = [p for p in descendants(root) if alive(p)]
        if not left:
            return
        fresh = [p for p in left if p not in termed]
        _signal(fresh, signal.SIGTERM)
        termed.update(fresh)
        if time.monotonic() > deadline:
            _signal(left, signal.SIGKILL)
        time.sleep(0.05)


def _start_time(pid: int):
    """When ``pid`` started (clock ticks since boot; ``/proc``), or None: with the pid, it names one
    process, not a later one that reuses the number."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _subreaper() -> bool:
    """Make this process a child subreaper (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


class Guard:
    """The guard's state: the children it started (name -> Popen), and its output lock."""

    def __init__(self, out=sys.stdout):
        self.out, self.children, self.lock = out, {}, threading.Lock()
        self.watched: dict = {}  # pid -> start time: the command's processes (Guard.watch)
        self.stopping = threading.Event()

    def say(self, obj: dict) -> None:
        with self.lock:
            if self.out is None:  # the command is gone
                return
            try:
                self.out.write(json.dumps(obj) + "\n")
                self.out.flush()
            except (OSError, ValueError):
                self.out = None

    def spawn(self, req: dict) -> dict:
        log = open(req["log"], "ab") if req.get("log") else subprocess.DEVNULL
        try:
            p = subprocess.Popen(req["argv"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=req.get("env"), cwd=req.get("cwd"), start_new_session=True)
        except OSError as err:
            return {"error": f"could not start {req['argv'][0]}: {err}"}
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self.children[p.pid] = (req.get("name", req["argv"][0]), p)
        return {"pid": p.pid}

    def reap(self) -> None:
        """Collect every ended child: the ones it started (reported), and adopted orphans."""
        for pid, (name, p) in list(self.children.items()):
            code = p.poll()
            if code is not None:
                del self.children[pid]
                if not self.stopping.is_set():
                    self.say({"event": "exit", "name": name, "pid": pid, "code": code})
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:  # it ended between the poll above and here
                name, p = self.children.pop(pid)
                p.returncode = os.waitstatus_to_exitcode(status)
                if not self.stopping.is_set():
                    self.say({"event": "exit", "name": name, "pid": pid, "code": p.returncode})

    def watch(self, pid: int, every: float = 0.25) -> None:
        """Note every process below ``pid`` (the command), with its start time, every ``every``
        seconds until stopped: processes the command starts itself (Ray's, in a simulation) are not
        in the guard's tree, and once the command is killed their parent links are gone."""
        def poll():
            while not self.stopping.is_set():
                for p in descendants(pid):
                    if p != os.getpid() and p not in self.watched:
                        self.watched[p] = _start_time(p)
                time.sleep(every)

        threading.Thread(target=poll, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        noted = [p for p, t in list(self.watched.items()) if t is not None and _start_time(p) == t]
        for p in noted:  # the command's own processes first (their children come back to init, not here)
            _signal([p] + descendants(p), signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and any(alive(p) and _start_time(p) == self.watched[p] for p in noted):
            time.sleep(0.05)
        _signal([p for p in noted if alive(p) and _start_time(p) == self.watched[p]], signal.SIGKILL)
        stop_tree(os.getpid(), reap=self.reap)


class GuardError(RuntimeError):
    """The guard could not start a process, or is gone."""


class GuardClient:
    """The command's handle on its guard: :meth:`spawn` a process in the guard's tree, see which
    ended (:attr:`exited`: name -> exit code), :meth:`stop` the tree.  If the command dies, the
    guard's standard input closes and the guard stops the tree by itself."""

    def __init__(self):
        import queue

        self.proc = subprocess.Popen([sys.executable, "-m", "emfl.flower.guard"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.replies: "queue.Queue" = queue.Queue()
        self.exited: dict = {}
        self.stopped = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.replies.get(timeout=120)
        if first.get("event") != "ready":
            raise GuardError(f"the deployment's guard did not start: {first}")
        self.pid = first["pid"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("event") == "exit":
                self.exited[msg["name"]] = msg["code"]
            elif msg.get("event") == "stopped":
                self.stopped.set()
            else:
                self.replies.put(msg.get("reply", msg))
        self.stopped.set()
        self.replies.put({"error": "the deployment's guard ended"})

    def spawn(self, name: str, argv: list, env: dict | None = None, cwd=None, log=None) -> int:
        """Start ``argv`` in the guard's tree (its own session; output to ``log``); its pid."""
        if self.proc.poll() is not None:
            raise GuardError("the deployment's guard has ended: it cannot start more processes")
        self.proc.stdin.write(json.dumps({"op": "spawn", "name": name, "argv": [str(a) for a in argv], "env": env,
                                          "cwd": str(cwd) if cwd else None, "log": str(log) if log else None}) + "\n")
        self.proc.stdin.flush()
        reply = self.replies.get(timeout=60)
        if "error" in reply:
            raise GuardError(reply["error"])
        return reply["pid"]

    def watch(self, pid: int) -> None:
        """Have the guard note the processes below ``pid`` (this command) as they come, and stop
        them too if the command dies: for what the command starts itself (Ray, in a simulation)."""
        self.proc.stdin.write(json.dumps({"op": "watch", "pid": int(pid)}) + "\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree(self) -> list:
        """The processes below the guard now."""
        return [p for p in descendants(self.pid) if alive(p)]

    def stop(self, timeout: float = 60) -> None:
        """Stop every process in the guard's tree, then the guard."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    """The guard's loop: requests on standard input, one JSON object a line."""
    _subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    guard = Guard()

    def on_term(signum, frame):
        guard.stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)

    def watch():
        while not guard.stopping.is_set():
            guard.reap()
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    guard.say({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "spawn":
            guard.say({"reply": guard.spawn(req)})
        elif req.get("op") == "watch":
            guard.watch(int(req["pid"]))
        elif req.get("op") == "stop":
            break
    guard.stop()  # asked to, or the command's end of the pipe closed: the command is gone
    guard.say({"event": "stopped"})
    os._exit(0)  # nothing left to flush to a command that may be gone


if __name__ == "__main__":
    sys.exit(main())
