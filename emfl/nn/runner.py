"""Long runs that never lose finished work: checkpoints, resume, atomic JSON histories.

``run(config, out)`` trains for ``config.rounds`` rounds and writes

* ``out`` (JSON): the config, the hardware, the data split and one record per evaluated round
  (round, global_acc, local_acc, bytes_down, bytes_up, cum_gib, seconds, train_loss), rewritten
  atomically after every evaluation;
* its checkpoint (:func:`checkpoint_path`: in ``checkpoint_dir``, else ``$EMFL_CHECKPOINT_DIR``,
  else the user's cache, outside the work tree): the server state every ``checkpoint_every``
  rounds (default: every round), at every evaluation and at the end, so that ``resume=True``
  continues, bit for bit on the same device, where the last checkpoint stopped, in this session
  or a later one.  It is written before the JSON, so the history is never ahead of it, carries
  the SHA-256 of its content (checked on load: a damaged file is refused, never trained on), and
  is read with ``weights_only=True`` (a checkpoint cannot run code).

One run writes a history at a time: a lock beside the history (``.NAME.json.lock``, an OS lock
that dies with its process, so ``kill -9`` leaves nothing to clear by hand) refuses a second
writer.  Temporary files that a killed write left behind are removed at the next start.

SIGINT (Ctrl-C) or SIGTERM end the current round, write both files and raise
:class:`Interrupted`; ``kill -9`` at any moment loses at most ``checkpoint_every`` rounds.  A run
that diverges stops with :class:`~emfl.nn.engine.Diverged`, leaving its last good checkpoint and
history in place.
"""

from __future__ import annotations

import dataclasses

import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import signal
import shutil
import tempfile
import threading
from pathlib import Path

import torch

from emfl.nn.data import DataError, _umask, atomic_save
from emfl.nn.engine import Diverged, Engine, _to_device
from emfl.nn.config import RunConfig

__all__ = ["run", "open_checkpoint", "nodes_memory_dir", "Recorder", "train", "load_task_data", "checkpoint_dir", "checkpoint_path", "write_json_atomic", "RunError",
           "save_checkpoint", "load_checkpoint", "CheckpointError", "HistoryLock"]


class RunError(RuntimeError):
    """A run that cannot start or continue as asked; the message says what to do."""


class CheckpointError(RunError):
    """A checkpoint that cannot be read, or whose content does not match its checksum."""


CHECKPOINT_FORMAT = 2  # a dict {"emfl_checkpoint": 2, "sha256": hex, "payload": uint8 tensor}


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` (a run's :meth:`~emfl.nn.engine.Engine.state_dict`) to ``path``, atomically,
    with the SHA-256 of its serialised bytes, so that :func:`load_checkpoint` can tell a damaged
    file from a good one."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return atomic_save({"emfl_checkpoint": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, path)


def load_checkpoint(path) -> dict:
    """The run state in the checkpoint ``path``, read without unpickling code
    (``weights_only=True``) and checked against its SHA-256.  Raises :class:`CheckpointError`
    for a file that is empty, truncated, altered or not a checkpoint.  (A checkpoint written
    before checksums were added, a bare state dict, is read as it is.)"""
    path = Path(path)
    try:
        outer = torch.load(path, weights_only=True)
    except Exception as err:
        raise CheckpointError(_unreadable(path, err)) from None
    if isinstance(outer, dict) and "emfl_checkpoint" in outer:
        payload = outer.get("payload")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
            raise CheckpointError(_unreadable(path, "no payload"))
        blob = payload.numpy().tobytes()
        if hashlib.sha256(blob).hexdigest() != outer.get("sha256"):
            raise CheckpointError(_unreadable(path, "its content does not match its SHA-256 checksum: the file was "
                                                    "damaged or altered after it was written"))
        try:
            state = torch.load(io.BytesIO(blob), weights_only=True)
        except Exception as err:
            raise CheckpointError(_unreadable(path, err)) from None
    else:
        state = outer
    if not isinstance(state, dict) or "round" not in state or "config" not in state:
        raise CheckpointError(_unreadable(path, "it holds no run state"))
    return state


def _unreadable(path: Path, why) -> str:
    text = str(why).strip()
    why = text.splitlines()[0][:200] if text else f"{type(why).__name__}, no message: an empty or truncated file"
    size = path.stat().st_size if path.exists() else 0
    return f"the checkpoint {path} cannot be read ({why}; {size} bytes)"


class HistoryLock:
    """The right to write the history ``out`` (and so its checkpoint): an exclusive OS lock on
    ``.NAME.json.lock`` beside it, held while the run lasts.  A second run of the same history,
    in this process or another, is refused with :class:`RunError`; the lock dies with its
    process (``kill -9`` included), and the lock file is removed when the run ends."""

    def __init__(self, out):
        self.out = Path(out).expanduser().resolve()
        self.path = self.out.parent / f".{self.out.name}.lock"
        self._fd = None

    def __enter__(self) -> "HistoryLock":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunError(f"another run is writing {self.out} now (it holds {self.path}); wait for it to "
                                   "end, stop it, or choose another --out (two writers would lose one run's work)") from None
                raise
            try:  # the file we locked is still the one at the path (a run ending removes it): else again
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            try:
                os.unlink(self.path)  # while still held: no other run can be between its open and its lock
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        return False


def _remove_leftovers(out: Path, ckpt: Path) -> list:
    """Temporary files of ``out`` and its checkpoint that a killed write left (``.NAME.*.tmp``);
    removed, while the history's lock is held, so none belongs to a running write."""
    gone = []
    for path in (out, ckpt):
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            try:
                tmp.unlink()
                gone.append(tmp)
            except OSError:
                pass
    return gone


def checkpoint_dir(directory=None) -> Path:
    """Where checkpoints go: ``directory``, else ``$EMFL_CHECKPOINT_DIR``, else the user's cache
    (``$XDG_CACHE_HOME/emfl/checkpoints``, by default ``~/.cache/emfl/checkpoints``): outside the
    work tree, so that a checkout stays clean and a run stopped at the end of a session continues
    with ``--resume`` in the next."""
    if directory:
        return Path(directory).expanduser()
    if os.environ.get("EMFL_CHECKPOINT_DIR"):
        return Path(os.environ["EMFL_CHECKPOINT_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "emfl" / "checkpoints"


def checkpoint_path(out, directory=None) -> Path:
    """The checkpoint of the history ``out``: ``NAME.TAG.ckpt`` in :func:`checkpoint_dir`, with
    ``TAG`` from ``out``'s absolute path, so that two histories of one name never share one."""
    out = Path(out).expanduser().resolve()
    tag = hashlib.sha1(str(out).encode()).hexdigest()[:10]
    return checkpoint_dir(directory) / f"{out.name}.{tag}.ckpt"


def _beside(out) -> Path:
    """Where earlier versions kept the checkpoint: ``OUT.ckpt`` beside the history."""
    return Path(str(out) + ".ckpt")


def write_json_atomic(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=True)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_task_data(config: RunConfig, data_dir=None, download: bool = False):
    """The federated data set of ``config.task`` (CIFAR-10 shards, FEMNIST writers, or the 12-bit
    patterns: ``num_shards`` clients, Dirichlet(``alpha``)-skewed, generated, no files), its inputs
    as ``config.inputs`` asks: ``standard``, per channel ``(x / 255 - mean) / std`` of the training
    set; ``unit``, ``x / 255`` in [0, 1]; ``centered``, ``(x / 255 - 0.5) / 0.5`` in [-1, 1]."""
    data = _load_task_data(config, data_dir, download)
    fixed = {"unit": (0.0, 1.0, "unit: x / 255"), "centered": (0.5, 0.5, "centered: 2 x / 255 - 1")}
    if config.inputs in fixed:
        mean, std, note = fixed[config.inputs]
        channels = len(data.mean)
        data = dataclasses.replace(data, mean=(mean,) * channels, std=(std,) * channels,
                                   info={**data.info, "inputs": note})
    return data


def _load_task_data(config: RunConfig, data_dir=None, download: bool = False):
    if config.task == "bits":
        from emfl.nn.bits import bits_federation

        return bits_federation(config.num_shards, config.alpha, seed=config.seed)
    if config.task == "cifar10":
        from emfl.nn.cifar import load_cifar10

        return load_cifar10(data_dir, seed=config.seed, alpha=config.alpha, num_shards=config.num_shards,
                            shard_size=config.shard_size, download=download, test_split=config.test_split)
    from emfl.nn.femnist import load_femnist

    return load_femnist(data_dir, seed=config.seed, max_writers=config.max_writers or None)


def _hardware(engine: Engine) -> dict:
    hw = {"device": str(engine.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
          "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
          "cpu_kernels": torch.backends.cpu.get_cpu_capability()}  # PyTorch's kernel set: its float32 round-off
    if engine.device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(engine.device)
    return hw


def _document(engine: Engine, complete: bool, transport: dict | None = None) -> dict:
    info = {k: v for k, v in engine.data.info.items() if k != "q"}
    doc = {"config": engine.config.to_dict(), "model_parameters": engine.d, "hardware": _hardware(engine),
           "data": info, "complete": complete, "records": engine.history}
    if transport is not None:
        doc["transport"] = dict(transport)
    return doc


class Interrupted(RuntimeError):
    """A run stopped by SIGINT or SIGTERM after finishing a round; its checkpoint and history are
    written, and ``--resume`` continues it."""

    def __init__(self, round: int, out):
        self.round = round
        super().__init__(f"interrupted after round {round}; continue with --resume ({out})")


class _StopRequests:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current round instead of
    killing the process.  A second SIGINT stops at once (the last checkpoint stays valid)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _load_checkpoint(ckpt: Path, out: Path) -> dict:
    """:func:`load_checkpoint`, with what to do when it cannot be used."""
    try:
        return load_checkpoint(ckpt)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; to start this run afresh delete it and the history {out}, "
                              "or choose another --out") from None


def _write_failed(err: Exception, engine, ckpt: Path, out: Path, last_saved: int) -> RunError:
    """A :class:`RunError` for a checkpoint or history that could not be written (a full disk, a
    read-only folder): what happened, and that what was saved before stands."""
    why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        why = "no space left on the device"
    saved = (f"round {last_saved} and every round before it are safe in {ckpt} and {out}" if last_saved >= 0
             else "no round had finished")
    return RunError(f"could not write the checkpoint or history of round {engine.round} ({why}): the disk may be "
                    f"full or the folder read-only. Nothing finished was lost: {saved}. Free some space or fix the "
                    "folder's permissions (or pass --checkpoint-dir), then continue with --resume")


def run(config: RunConfig, out, data_dir=None, resume: bool = False, download: bool = False,
        data=None, progress: bool = True, checkpoint_dir=None, round_fn=None, transport=None,
        nodes_keep_memory: bool = False) -> dict:
    """Run (or, with ``resume``, continue) a federated training run; returns the JSON document.

    The checkpoint is written every ``checkpoint_every`` rounds, at every evaluation and at the
    end, always before the JSON history, so the history is never ahead of the checkpoint (and a
    resume rewrites it from the checkpoint's own copy).  SIGINT or SIGTERM end the current round,
    write both and raise :class:`Interrupted`.  ``checkpoint_dir``: see :func:`checkpoint_path`; a
    checkpoint an earlier version left beside the history (``OUT.ckpt``) is moved there on resume.

    ``round_fn(engine) -> info`` runs one round (default ``engine.run_round()``; :mod:`emfl.flower`
    sends the clients' work over Flower); ``transport``, a dict saying how the clients were
    reached, is kept in the JSON document; ``nodes_keep_memory``: the clients' memory stays on
    Flower's nodes (else a resume takes it from the nodes' folder here, :func:`nodes_memory_dir`).

    The steps: :func:`open_checkpoint` (what to continue from, or nothing), the engine, a
    :class:`Recorder` (checkpoint, then history), :func:`train` (the loop)."""
    out = Path(out)
    if out.suffix != ".json":
        raise RunError(f"--out must name a .json file; got {out}")
    ckpt = checkpoint_path(out, checkpoint_dir)
    with HistoryLock(out):
        _remove_leftovers(out, ckpt)
        state = open_checkpoint(config, out, ckpt, resume)
        engine = Engine(config, data if data is not None else load_task_data(config, data_dir, download))
        if state is not None:
            engine.load_state_dict(state)
        _nodes_memory(engine, ckpt, fresh=state is None, load=not nodes_keep_memory)
        recorder = Recorder(engine, out, ckpt, transport, last_saved=int(state["round"]) if state is not None else -1)
        if state is None or engine.round >= config.rounds:
            recorder.save(complete=engine.round >= config.rounds)  # both files exist from the start
            if engine.round >= config.rounds:
                return recorder.document(complete=True)
        train(engine, recorder, round_fn if round_fn is not None else Engine.run_round, progress)
        return recorder.document(complete=True)


def nodes_memory_dir(ckpt: Path) -> Path:
    """Where Flower nodes on this machine keep the clients' memory of the run whose checkpoint is
    ``ckpt`` (:mod:`emfl.flower.memory`): beside it, ``NAME.ckpt.memory``."""
    return ckpt.with_name(ckpt.name + ".memory")


def _nodes_memory(engine: Engine, ckpt: Path, fresh: bool, load: bool = True) -> None:
    """A run that starts afresh removes the clients' memory an earlier run of its name left on
    Flower nodes here; one that resumes a checkpoint Flower's server wrote (which cannot hold the
    clients' memory: it stayed on the nodes) takes each client's memory from the nodes' folder."""
    folder = nodes_memory_dir(ckpt)
    if not folder.is_dir():
        return
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
        return
    if not load:
        return
    from emfl.flower.memory import ClientMemory, from_bytes

    store = ClientMemory(folder, engine.config.checkpoint_every)
    for s in store.clients():
        if s not in engine.memory:
            blob = store.recall(s, engine.round)
            if blob is not None:
                engine.memory[s] = _to_device(from_bytes(blob), engine.device)


def open_checkpoint(config: RunConfig, out: Path, ckpt: Path, resume: bool) -> dict | None:
    """The state to continue from (``resume`` and a checkpoint that matches ``config``), or None to
    start afresh; a :class:`RunError` that says what to do when neither is right (a finished
    history is never overwritten, a checkpoint of other settings never continued)."""
    if resume and not ckpt.exists() and _beside(out).exists():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(_beside(out)), str(ckpt))
    if resume and ckpt.exists():
        state = _load_checkpoint(ckpt, out)
        try:
            saved = RunConfig(**state["config"])
        except (TypeError, ValueError) as err:
            raise RunError(f"the checkpoint {ckpt} holds settings this version cannot use ({err}); "
                           "choose another --out to start afresh") from None
        diff = config.differences(saved)
        if diff:
            raise RunError(f"the checkpoint {ckpt} was made with other settings ({', '.join(diff)}); "
                           "resume with the same settings or choose another --out")
        if config.rounds < int(state["round"]):
            raise RunError(f"the checkpoint {ckpt} is at round {state['round']}, past --rounds {config.rounds}: "
                           f"pass --rounds {state['round']} or more (a history never holds more rounds than its "
                           "config says)")
        return state
    if resume and out.exists():
        raise RunError(f"{out} has no checkpoint {ckpt} to continue from; choose another --out to start "
                       "afresh (or delete the history to start this one again)")
    if not resume and (out.exists() or ckpt.exists()):
        raise RunError(f"{out} or its checkpoint already exists: pass --resume to continue it, "
                       "or choose another --out (finished work is never overwritten)")
    return None


class Recorder:
    """Writes a run's two files: its checkpoint, then its JSON history (so the history is never
    ahead of the checkpoint); remembers the last round saved, for the message a failed write gives."""

    def __init__(self, engine: Engine, out: Path, ckpt: Path, transport: dict | None = None, last_saved: int = -1):
        self.engine, self.out, self.ckpt, self.transport = engine, out, ckpt, transport
        self.last_saved = last_saved

    def document(self, complete: bool) -> dict:
        return _document(self.engine, complete, self.transport)

    def save(self, complete: bool) -> None:
        try:
            save_checkpoint(self.engine.state_dict(), self.ckpt)  # first the checkpoint, then the history
            write_json_atomic(self.document(complete), self.out)
        except (OSError, RuntimeError) as err:
            raise _write_failed(err, self.engine, self.ckpt, self.out, self.last_saved) from None
        self.last_saved = self.engine.round


def train(engine: Engine, recorder: Recorder, step, progress: bool = True) -> None:
    """The loop: ``step(engine)`` until ``config.rounds``; evaluate every ``eval_every`` rounds and
    at the end; save at every evaluation, every ``checkpoint_every`` rounds and when asked to stop
    (then raise :class:`Interrupted`)."""
    config, out, ckpt = engine.config, recorder.out, recorder.ckpt
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rounds, initial=engine.round, desc=f"{config.algo} {config.task}", unit="round")
    try:
        with _StopRequests() as stop:
            while engine.round < config.rounds:
                try:
                    info = step(engine)
                except Diverged as err:
                    raise Diverged(f"{err}; the last good checkpoint (round {recorder.last_saved}) is {ckpt}; "
                                   f"the history so far is in {out}") from None
                r = engine.round
                evaluated = r % config.eval_every == 0 or r == config.rounds
                if evaluated:
                    rec = engine.evaluate(info)
                    if bar is not None:
                        bar.set_postfix(global_acc=f"{rec['global_acc']:.3f}", local_acc=f"{rec['local_acc']:.3f}",
                                        gib=f"{rec['cum_gib']:.2f}")
                if evaluated or stop.requested or r % config.checkpoint_every == 0:
                    recorder.save(complete=r == config.rounds)
                if bar is not None:
                    bar.update(1)
                if stop.requested and r < config.rounds:
                    raise Interrupted(r, out)
    finally:
        if bar is not None:
            bar.close()


__all__ += ["Interrupted"]


def data_or_generated(config: RunConfig, data_dir=None) -> tuple:
    """``(data, source)``: the task's real data when ``data_dir`` (or ``$EMFL_DATA_DIR``) holds
    it, else a small generated federation (random images: it runs, but learns nothing), with
    ``source`` saying which and why, so that a notebook runs anywhere."""
    from emfl.nn.data import generated_federation

    try:
        data = load_task_data(config, data_dir)
        return data, f"{config.task} from {data.info.get('source', data_dir)}"
    except DataError as err:
        shape, classes = ((3, 32, 32), 10) if config.task == "cifar10" else ((1, 28, 28), 62)
        return generated_federation(20, 64, 16, shape, classes, config.seed), f"generated images ({err})"


def run_in_memory(config: RunConfig, data) -> list:
    """Train ``config.rounds`` rounds without writing anything (for a few rounds live in a
    notebook); returns the evaluated records, every ``config.eval_every`` rounds and at the end."""
    engine = Engine(config, data)
    while engine.round < config.rounds:
        info = engine.run_round()
        if engine.round % config.eval_every == 0 or engine.round == config.rounds:
            engine.evaluate(info)
    return engine.history


__all__ += ["data_or_generated", "run_in_memory"]
