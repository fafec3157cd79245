"""The Flower apps: a ``ServerApp`` that runs an algorithm's server, a ``ClientApp`` that runs its
clients, and :func:`simulate`.  See :mod:`emfl.flower` for what maps to what.

A run is described by its *settings* (a JSON-able dict): ``config`` (``RunConfig.to_dict()``),
``out``, ``data_dir``, ``resume``, ``checkpoint_dir``, ``supernodes`` (how many nodes the server
waits for) and ``round_timeout`` (seconds the server waits for a round's replies).  The simulation
hands them to the apps directly; a deployment passes the path of a settings file in Flower's run
config (``emfl-settings``), which the module-level ``server_app`` and ``client_app`` read.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from emfl.flower.errors import FlowerError, require_flower
from emfl.nn import wire
from emfl.nn.algorithms.base import ClientResult
from emfl.nn.config import RunConfig
from emfl.nn.engine import Engine
from emfl.nn.seeding import ClientJob

require_flower()

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from emfl.flower.memory import ClientMemory, from_bytes, to_bytes  # noqa: E402
from emfl.flower.protocol import RECORD, SETTINGS_KEY, reply_to, settings_from  # noqa: E402

__all__ = ["make_client_app", "make_server_app", "simulate", "FlowerRounds", "client_app", "server_app",
           "TRAIN", "node_for", "waves", "train_fields",
           ]

TRAIN = "train"  # the Flower message type of a round's work


def node_for(s: int, nodes: list) -> int:
    """The node that serves client ``s``: ``nodes`` sorted by id, client ``s`` on node ``s mod N``."""
    return sorted(nodes)[int(s) % len(nodes)]


def _config(settings: dict) -> RunConfig:
    return RunConfig(**settings["config"])


# --------------------------------------------------------------------------- the client


_RUNTIMES: dict = {}  # settings -> Engine: one model, algorithm and data set per client process
_LOCK = threading.Lock()


def _client_runtime(settings: dict, data=None, data_dir=None) -> Engine:
    """The client side of a run in this process (built once): an Engine whose model and algorithm
    the clients use; its server half stays idle.  ``data_dir``: the node's own copy of the data
    (default: the run's ``data_dir``, the server's, which is the node's on one machine)."""
    data_dir = data_dir or settings.get("data_dir")
    key = json.dumps({"config": settings["config"], "data_dir": data_dir}, sort_keys=True)
    with _LOCK:
        if key not in _RUNTIMES:
            config = _config(settings)
            if settings.get("threads"):
                torch.set_num_threads(int(settings["threads"]))
            if data is None:
                from emfl.nn.runner import load_task_data

                data = load_task_data(config, data_dir)
            _RUNTIMES[key] = Engine(config, data)
        return _RUNTIMES[key]


def _floats(t: torch.Tensor) -> bytes:
    """Diagnostics as little-endian floats of the run's precision (float32, or float64)."""
    return t.detach().cpu().numpy().astype(f"<f{t.dtype.itemsize}").tobytes()


def train_fields(settings: dict, fields: dict, memory: bytes | None, data=None, data_dir=None) -> tuple:
    """One client's part of a round: decode the server's message (``fields``: its record), the
    algorithm's ``client_update``, local accuracy, encode the reply; returns ``(reply, memory)``,
    the client's new memory as bytes (None: unchanged).  The worker of a node and an in-process
    ClientApp both call this."""
    engine = _client_runtime(settings, data, data_dir)
    algo = engine.algorithm
    s, rnd = int(fields["client"]), int(fields["round"])
    job = ClientJob(engine.config.seed, rnd, s, from_bytes(memory))
    down = wire.decode(json.loads(fields["form"]), fields["payload"], **algo.receiver(job), device=engine.device)
    with _LOCK:  # one client at a time per process: they share the model
        result = algo.client_update(down, job, engine.runtime)
        acc = engine.local_accuracy(s, result.local)
        kept = to_bytes(result.memory) if result.memory is not None else None
        up_form, payload = wire.encode(result.up)
    reply = {"client": s, "round": rnd, "form": json.dumps(up_form), "payload": payload,
             "loss": float(result.loss), "local_acc": float(acc)}
    if result.stats is not None:  # diagnostics for the record, not the algorithm's message
        reply["stats"] = _floats(result.stats)
    return reply, kept


def node_memory(settings: dict, base=None) -> ClientMemory:
    """The run's client memory on this machine (:mod:`emfl.flower.memory`): in the checkpoint
    folder ``base`` (a node's; None: the default one), beside where the run's checkpoint is."""
    from emfl.nn.runner import checkpoint_path, nodes_memory_dir

    return ClientMemory(nodes_memory_dir(checkpoint_path(settings["out"], base)),
                        settings["config"].get("checkpoint_every", 1))


def make_client_app(settings: dict | None = None, data=None, data_dir=None, memory_dir=None) -> ClientApp:
    """The ClientApp that trains in its own process (the simulation's, and a deployment node's
    executor's); ``settings`` (and ``data``, for generated data sets) given, or read from the run
    config; ``data_dir``: the node's own copy of the data; ``memory_dir``: the checkpoint folder in
    which the node keeps its clients' memory (:func:`node_memory`; None: in ``context.state``, lost
    when the node stops)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context):
        run = settings or settings_from(context)
        return reply_to(msg, context, lambda fields, memory: train_fields(run, fields, memory, data, data_dir),
                        node_memory(run, memory_dir) if memory_dir is not None else None)

    return app


# --------------------------------------------------------------------------- the server


class FlowerRounds:
    """``round_fn`` for :func:`emfl.nn.runner.run`: the server's half of each round here, the
    clients' over Flower's ``grid``.  ``transport`` holds the payload bytes that actually went
    out and came back (they equal the engine's counts, checked every message), from round
    ``wire_first_round`` on: a resumed run counts only the rounds this process sent.  The first round
    waits at most ``first_timeout`` seconds (the nodes' start-up), the others ``timeout``."""

    def __init__(self, grid: Grid, nodes: list, timeout: float, transport: dict, first_timeout: float = 300,
                 cancel: threading.Event | None = None, in_waves: bool = True, memory: ClientMemory | None = None):
        self.grid, self.nodes, self.timeout, self.transport = grid, sorted(nodes), timeout, transport
        self.memory = memory  # where the nodes keep their clients' memory, when they are on this machine
        # in waves of one message per node when the nodes' ClientApps keep clients' memory in
        # context.state (two at once on a node would each write back their own copy); all at once
        # when each node's worker keeps it (a deployment's nodes)
        self.in_waves = in_waves
        self.cancel = cancel  # set when the simulation runtime has stopped: waiting is pointless
        self.first_timeout, self.first = min(first_timeout, timeout), True
        transport.setdefault("wire_bytes_down", 0)
        transport.setdefault("wire_bytes_up", 0)

    def __call__(self, engine: Engine) -> dict:
        algo = engine.algorithm
        if engine.memory:  # a checkpoint `emfl run` wrote: its clients' memory goes to the nodes
            self.hand_memory_to_nodes(engine)
        plan = engine.begin_round()
        self.transport.setdefault("wire_first_round", plan.rnd + 1)
        out = []
        for job, msg in zip(plan.jobs, plan.msgs):
            form, payload = wire.encode(msg)
            self.transport["wire_bytes_down"] += len(payload)
            rec = ConfigRecord({"client": int(job.s), "round": int(job.rnd), "form": json.dumps(form), "payload": payload})
            out.append(Message(content=RecordDict({RECORD: rec}), dst_node_id=node_for(job.s, self.nodes),
                               message_type=TRAIN))
        timeout = self.first_timeout if self.first else self.timeout
        deadline = time.monotonic() + timeout
        replies = {}
        for wave in (waves(out) if self.in_waves else [out]):
            for reply in self.exchange(wave, max(0.0, deadline - time.monotonic())):
                if reply.has_error():
                    raise FlowerError(f"round {plan.rnd + 1}: a client failed on node {reply.metadata.src_node_id}: "
                                      f"{reply.error.reason}")
                rec = reply.content[RECORD]
                replies[int(rec["client"])] = rec
        missing = [int(s) for s in plan.clients if int(s) not in replies]
        if missing:
            err = FlowerError(f"round {plan.rnd + 1}: no reply from client(s) {missing} (nodes "
                              f"{sorted({node_for(s, self.nodes) for s in missing})}) within {timeout:g} s: "
                              "a SuperNode stopped or is too slow; the run continues from its checkpoint with --resume")
            err.startup = self.first  # nothing came back yet: the nodes never started
            raise err
        self.first = False
        for job, msg in zip(plan.jobs, plan.msgs):
            rec = replies[int(job.s)]
            self.transport["wire_bytes_up"] += len(rec["payload"])
            up = wire.decode(json.loads(rec["form"]), rec["payload"], **algo.receiver(job, msg), device=engine.device)
            stats = (torch.from_numpy(np.frombuffer(rec["stats"], dtype=f"<f{engine.dtype.itemsize}").copy())
                     .to(engine.device)
                     if "stats" in rec else None)
            engine.receive(plan, job, msg, ClientResult(up, float(rec["loss"]), local=None, stats=stats), float(rec["local_acc"]))
        return engine.end_round(plan)

    def hand_memory_to_nodes(self, engine: Engine) -> None:
        """Continue on Flower a run whose checkpoint holds the clients' memory (the engine's): write
        it where the nodes keep it (they are on this machine), as of the checkpoint's round."""
        if self.memory is None:
            raise FlowerError("this checkpoint holds the clients' memory (it was written by `emfl run`) and some "
                              "SuperNodes of this deployment are on other machines, which cannot read it: continue "
                              "the run with `emfl run --resume`, or with every SuperNode on this machine")
        for s, m in engine.memory.items():
            self.memory.keep(int(s), engine.round - 1, to_bytes(m))
        engine.memory.clear()

    def exchange(self, messages: list, timeout: float) -> list:
        """Send ``messages`` and collect their replies for at most ``timeout`` seconds (Grid's
        ``send_and_receive``, stopping early when ``cancel`` is set)."""
        pending = set(self.grid.push_messages(messages))
        end, got = time.monotonic() + timeout, []
        while pending and time.monotonic() < end:
            if self.cancel is not None and self.cancel.is_set():
                raise FlowerError("the simulation runtime stopped while the server waited for replies")
            replies = list(self.grid.pull_messages(pending))
            got.extend(replies)
            pending.difference_update(r.metadata.reply_to_message_id for r in replies)
            if pending:
                time.sleep(0.1)  # Flower's own HTTP grid polls every 3 s
        return got


def waves(messages: list, node=lambda m: m.metadata.dst_node_id) -> list:
    """``messages`` in waves with at most one message per node: wave ``k`` holds each node's
    ``k``-th message.  A node never trains two clients at once, as in the engine; a ClientApp that
    keeps its clients' memory in ``context.state`` (no folder) needs it, since two runs of it at
    the same time would each write back their own copy (Flower's simulation keeps the last)."""
    per_node: dict = {}
    for m in messages:
        per_node.setdefault(node(m), []).append(m)
    depth = max((len(v) for v in per_node.values()), default=0)
    return [[v[k] for v in per_node.values() if k < len(v)] for k in range(depth)]


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list:
    """The ids of ``n`` connected nodes, waiting up to ``timeout`` seconds for them."""
    end = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= n:
            return sorted(nodes)[:n]
        if time.monotonic() > end:
            raise FlowerError(f"only {len(nodes)} of {n} SuperNodes connected within {timeout:g} s")
        time.sleep(0.5)


def server_main(settings: dict, grid: Grid, data=None, mode: str = "deployment", cancel=None) -> dict:
    """The server's side of a run: the runner's loop (checkpoints, resume, the JSON history) with
    the clients reached over ``grid``."""
    from emfl.nn.runner import run

    config = _config(settings)
    if mode == "deployment" and settings.get("threads"):  # the ServerApp's own process: as the nodes
        torch.set_num_threads(int(settings["threads"]))
    if mode == "deployment":  # the ServerApp's own process: replies pulled as soon as they are there
        from emfl.flower.supernode import PULLERS, quick_pulls

        quick_pulls(where=(PULLERS[0], PULLERS[2]))  # not the SuperNode's loop: this process has none
    nodes = wait_for_nodes(grid, int(settings.get("supernodes", 1)), float(settings.get("connect_timeout", 120)))
    transport = {"name": "flower", "mode": mode, "supernodes": len(nodes)}
    if settings.get("node_worker"):
        transport["node_worker"] = settings["node_worker"]
    here = node_memory(settings, settings.get("checkpoint_dir")) if settings.get("nodes_here", True) else None
    rounds = FlowerRounds(grid, nodes, float(settings.get("round_timeout", 600)), transport,
                          float(settings.get("first_timeout", 300)), cancel, in_waves=settings.get("waves", True),
                          memory=here)
    return run(config, settings["out"], data_dir=settings.get("data_dir"), resume=bool(settings.get("resume")),
               data=data, progress=False, checkpoint_dir=settings.get("checkpoint_dir"), round_fn=rounds,
               transport=transport, nodes_keep_memory=True)


def make_server_app(settings: dict | None = None, data=None, errors: list | None = None,
                    mode: str = "deployment", cancel: threading.Event | None = None) -> ServerApp:
    """The ServerApp; an exception it raises is appended to ``errors`` (the simulation re-raises
    it) and raised again."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = settings or settings_from(context)
        _status(run, {"pid": os.getpid()})  # the command watches this process
        try:
            server_main(run, grid, data, mode, cancel)
        except BaseException as err:
            if errors is not None:
                errors.append(err)
            _status(run, {"pid": os.getpid(), "error": str(err) or type(err).__name__})
            raise
        _status(run, {"pid": os.getpid(), "done": True})

    return app


def _status(settings: dict, what: dict) -> None:
    """Tell the command that started the deployment how the ServerApp stands (its pid when it
    starts, its error or ``done`` when it ends): the ``status`` file of the settings, if any."""
    path = settings.get("status")
    if path:
        from emfl.nn.runner import write_json_atomic

        write_json_atomic(what, path)


# the ServerApp a deployment names in its pyproject.toml (emfl.flower.apps:server_app); its ClientApp
# is emfl.flower.clientapp:client_app, which starts without torch
server_app = make_server_app()
client_app = make_client_app()


# --------------------------------------------------------------------------- the simulation


def simulate(config: RunConfig, out, supernodes: int = 2, data=None, data_dir=None, resume: bool = False,
             checkpoint_dir=None, round_timeout: float = 600, threads_per_node: int = 1) -> dict:
    """``config`` under Flower's simulation (the Ray backend) with ``supernodes`` virtual
    SuperNodes, writing the run JSON ``out`` as ``python -m emfl run`` does; returns it.  ``data``:
    a data set in memory (generated data), else the task's data from ``data_dir``.  When Ray itself
    fails to start (its raylet waits a fixed 15 s for its agents, which a loaded machine can
    exceed: Ray issue #65983), the simulation is started again, three tries in all, continuing
    from the checkpoint."""
    import os

    if int(supernodes) < 1:
        raise FlowerError(f"--supernodes must be at least 1; got {supernodes}")
    from flwr.simulation import run_simulation

    from emfl.nn.runner import checkpoint_dir as _checkpoint_dir

    settings = {"config": config.to_dict(), "out": str(out), "data_dir": data_dir, "resume": resume,
                "checkpoint_dir": checkpoint_dir, "supernodes": supernodes, "round_timeout": round_timeout,
                "threads": threads_per_node}
    cpus = max(1, min(supernodes * threads_per_node, os.cpu_count() or 1))
    for attempt in (1, 2, 3):
        errors: list = []
        crash, cancel = None, threading.Event()
        try:
            run_simulation(server_app=make_server_app(settings, data, errors, "simulation", cancel),
                           client_app=make_client_app(settings, data, memory_dir=_checkpoint_dir(checkpoint_dir)),
                           num_supernodes=supernodes,
                           backend_config={"client_resources": {"num_cpus": threads_per_node, "num_gpus": 0.0},
                                           "init_args": {"num_cpus": cpus, "include_dashboard": False}})
        except RuntimeError as err:  # the simulation runtime itself (Ray) failed
            crash = err
        finally:
            cancel.set()  # a server still waiting for replies stops
        err = errors[0] if errors else crash
        if err is None:
            break
        if attempt < 3 and ((crash is not None and not errors) or getattr(err, "startup", False)):
            # Ray's workers failed to start (on a loaded machine its raylet gives its agents 15 s):
            # again (three tries in all), continuing from the checkpoint if the server wrote one
            import warnings

            warnings.warn(f"Flower's simulation runtime failed to start ({err}); trying again")
            settings["resume"] = True
            continue
        raise err
    with open(out) as f:
        doc = json.load(f)
    if not doc.get("complete"):
        raise FlowerError(f"the simulation ended before round {config.rounds}; the history so far is {out}")
    return doc
