"""Long runs that never lose finished work: checkpoints, resume, atomic JSON histories.

``run(config, out)`` trains for ``config.rounds`` rounds and writes

* ``out`` (JSON): the config, the hardware, the data split and one record per evaluated round
  (round, global_acc, local_acc, bytes_down, bytes_up, cum_gib, seconds, train_loss), rewritten
  atomically after every evaluation;
* ``out`` + ``.ckpt``: the server state every ``checkpoint_every`` rounds and at the end, so that
  ``resume=True`` continues, bit for bit on the same device, where the last checkpoint stopped.

A run that diverges stops with :class:`~emfl.nn.engine.Diverged`, leaving its last good
checkpoint and history in place.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from emfl.nn.data import DataError, _umask, atomic_save
from emfl.nn.engine import Diverged, Engine, RunConfig

__all__ = ["run", "load_task_data", "checkpoint_path", "write_json_atomic", "RunError"]


class RunError(RuntimeError):
    """A run that cannot start or continue as asked; the message says what to do."""


def checkpoint_path(out) -> Path:
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
    """The federated data set of ``config.task`` (CIFAR-10 shards or FEMNIST writers)."""
    if config.task == "cifar10":
        from emfl.nn.cifar import load_cifar10

        return load_cifar10(data_dir, seed=config.seed, alpha=config.alpha, num_shards=config.num_shards,
                            shard_size=config.shard_size, download=download, test_split=config.test_split)
    from emfl.nn.femnist import load_femnist

    return load_femnist(data_dir, seed=config.seed, max_writers=config.max_writers or None)


def _hardware(engine: Engine) -> dict:
    hw = {"device": str(engine.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
          "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    if engine.device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(engine.device)
    return hw


def _document(engine: Engine, complete: bool) -> dict:
    info = {k: v for k, v in engine.data.info.items() if k != "q"}
    return {"config": engine.config.to_dict(), "model_parameters": engine.d, "hardware": _hardware(engine),
            "data": info, "complete": complete, "records": engine.history}


def run(config: RunConfig, out, data_dir=None, resume: bool = False, download: bool = False,
        data=None, progress: bool = True) -> dict:
    """Run (or, with ``resume``, continue) a federated training run; returns the JSON document."""
    out = Path(out)
    ckpt = checkpoint_path(out)
    if out.suffix != ".json":
        raise RunError(f"--out must name a .json file; got {out}")
    state = None
    if resume:
        if not ckpt.exists():
            raise RunError(f"nothing to resume: no checkpoint {ckpt}; run without --resume to start")
        try:
            state = torch.load(ckpt, weights_only=False)
        except Exception as err:
            raise RunError(f"the checkpoint {ckpt} cannot be read ({err}); delete it to start afresh") from None
        saved = RunConfig(**state["config"])
        diff = config.differences(saved)
        if diff:
            raise RunError(f"the checkpoint {ckpt} was made with other settings ({', '.join(diff)}); "
                           "resume with the same settings or choose another --out")
    elif out.exists() or ckpt.exists():
        raise RunError(f"{out} or its checkpoint already exists: pass --resume to continue it, "
                       "or choose another --out (finished work is never overwritten)")
    if data is None:
        data = load_task_data(config, data_dir, download)
    engine = Engine(config, data)
    if state is not None:
        engine.load_state_dict(state)
        if engine.round >= config.rounds:
            doc = _document(engine, complete=True)
            write_json_atomic(doc, out)
            return doc
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rounds, initial=engine.round, desc=f"{config.algo} {config.task}", unit="round")
    try:
        while engine.round < config.rounds:
            try:
                info = engine.run_round()
            except Diverged as err:
                last = torch.load(ckpt, weights_only=False)["round"] if ckpt.exists() else None
                where = f"the last good checkpoint (round {last}) is {ckpt}" if last is not None else "no checkpoint was written yet"
                raise Diverged(f"{err}; {where}; the history so far is in {out}") from None
            r = engine.round
            if r % config.eval_every == 0 or r == config.rounds:
                rec = engine.evaluate(info)
                write_json_atomic(_document(engine, complete=r == config.rounds), out)
                if bar is not None:
                    bar.set_postfix(global_acc=f"{rec['global_acc']:.3f}", local_acc=f"{rec['local_acc']:.3f}",
                                    gib=f"{rec['cum_gib']:.2f}")
            if r % config.checkpoint_every == 0 or r == config.rounds:
                atomic_save(engine.state_dict(), ckpt)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return _document(engine, complete=True)


__all__ += ["DataError", "Diverged"]


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
