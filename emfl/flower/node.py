"""A node's worker: the long-lived process in which a SuperNode's clients train.

``python -m emfl.flower.node --socket PATH [--data-dir DIR] [--threads N] [--settings FILE]
[--memory-dir DIR]``
listens on the Unix socket ``PATH`` (readable by its user only).  Each request is one client's
part of a round (:mod:`emfl.flower.frames`: the server's message and the run's settings); the
worker answers with :func:`emfl.flower.apps.train_fields`'s reply and keeps what the client keeps
between its rounds (its memory) on disk, by run, client and round (``--memory-dir``:
:mod:`emfl.flower.memory`), where a resumed run finds it.  It
imports torch and emfl once and reads the node's data once per run (``--settings``: at start,
before the first message), so that the short-lived ClientApp Flower starts for each message
(:mod:`emfl.flower.clientapp`) costs milliseconds of work.  Requests are served one at a time: a
node trains one client at a time, as in the engine.

``--data-dir`` is the node's own copy of the data; without it, the run's ``data_dir`` (the
server's, which is the node's when they share a machine).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

__all__ = ["serve", "main"]


def serve(address: str, data_dir=None, threads: int = 1, settings: dict | None = None, once: bool = False,
          memory_dir=None) -> None:
    """Answer requests on the Unix socket ``address`` until stopped (``once``: one request).  The
    clients' memory goes to ``memory_dir`` (a checkpoint folder: :mod:`emfl.flower.memory`; None:
    the default one)."""
    import torch

    from emfl.flower import frames
    from emfl.flower.apps import _client_runtime, node_memory, train_fields

    torch.set_num_threads(int(threads))
    if settings is not None:  # read the data before the first round asks for it
        _client_runtime(settings, data_dir=data_dir)
    if os.path.exists(address):
        os.unlink(address)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket: this user only
    try:
        server.bind(address)
    finally:
        os.umask(old)
    server.listen(64)
    print(f"emfl worker {os.getpid()} ready on {address}", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            started = time.perf_counter()
            try:
                req = frames.receive(conn)
                run = json.loads(req.pop("settings"))
                store, s, rnd = node_memory(run, memory_dir), int(req["client"]), int(req["round"])
                reply, kept = train_fields(run, req, store.recall(s, rnd), data_dir=data_dir)
                if kept is not None:
                    store.keep(s, rnd, kept)
            except Exception as err:  # the ClientApp turns it into Flower's error reply
                reply = {"error": f"{type(err).__name__}: {err}"}
            reply["pid"] = os.getpid()
            try:
                frames.send(conn, reply)
            except OSError:
                pass  # the ClientApp is gone (its SuperNode stopped it); nothing to answer
            print(f"client {reply.get('client')} round {reply.get('round')}: "
                  f"{time.perf_counter() - started:.2f} s", flush=True)
        if once:
            return


def executor_available() -> bool:
    """Whether this Flower has the pieces :func:`execute` uses (flwr 1.42's Runtime API); elsewhere
    a deployment uses Flower's own ClientApp processes."""
    try:
        _flower_runtime()
        return True
    except (ImportError, AttributeError):
        return False


def _flower_runtime() -> dict:
    from flwr.common.constant import SubStatus
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    return dict(SubStatus=SubStatus, AcquireTaskRequest=AcquireTaskRequest, CLIENT_APP=TaskType.CLIENT_APP,
                HeartbeatSender=HeartbeatSender, heartbeat_fn=make_task_heartbeat_fn_http,
                TokenInterceptor=RuntimeTokenHttpInterceptor, VersionInterceptor=RuntimeVersionHttpInterceptor,
                retry=make_simple_http_retry_invoker, Client=RuntimeHttpClient, pull_task_input=pull_task_input,
                push_message=push_message, push_task_output=push_task_output)


def execute(runtime_api: str, data_dir=None, threads: int = 1, settings: dict | None = None,
            poll: float = 0.02, memory_dir=None) -> None:
    """Be the node's ClientApp executor: ask the SuperNode's Runtime API (``runtime_api``, a
    SuperNode started with ``--isolation process``) for the next ClientApp task every ``poll``
    seconds and run it here, in this process, where torch, emfl and the node's data are loaded
    once.  It does what Flower's ``flwr-clientapp`` does for one task (pull the message and the
    node's context, run the ClientApp, push the reply and the context back), without a process
    per message.  Clients' memory goes to ``memory_dir`` (a checkpoint folder, None: the default
    one; :mod:`emfl.flower.memory`), where a resumed run finds it."""
    import torch

    from emfl.flower.apps import _client_runtime, make_client_app

    fl = _flower_runtime()
    from emfl.flower.supernode import PULLERS, quick_pulls

    quick_pulls(where=PULLERS[:1])  # a task's message is pulled from the SuperNode as soon as it is there
    torch.set_num_threads(int(threads))
    if settings is not None:
        _client_runtime(settings, data_dir=data_dir)
    from emfl.nn.runner import checkpoint_dir

    app = make_client_app(data_dir=data_dir, memory_dir=checkpoint_dir(memory_dir))

    def connect(interceptors):
        return fl["Client"].from_server_address(server_address=runtime_api, insecure=True, root_certificates=None,
                                                interceptors=interceptors, retry_invoker=fl["retry"]())

    tasks = connect([fl["VersionInterceptor"](component_name="SuperExec")])
    print(f"emfl executor {os.getpid()} ready for {runtime_api}", flush=True)
    while True:
        res = tasks.AcquireTask(fl["AcquireTaskRequest"](supported_task_types=[fl["CLIENT_APP"]],
                                                         agentapp_fab_hashes=[]))
        if not (res.HasField("task") and res.token):
            time.sleep(poll)
            continue
        started = time.perf_counter()
        client = connect([fl["VersionInterceptor"](component_name="flwr-clientapp"), fl["TokenInterceptor"](res.token)])
        beat = fl["HeartbeatSender"](fl["heartbeat_fn"](client))
        beat.start()
        context, status, details = None, fl["SubStatus"].FAILED, "the ClientApp failed"
        try:
            message, context, _run, _fab = fl["pull_task_input"](client)
            reply = app(message=message, context=context)
            fl["push_message"](client, reply, context)
            status, details = fl["SubStatus"].COMPLETED, ""
        except Exception as err:  # Flower marks the task failed; the server's round says which client
            details = f"{type(err).__name__}: {err}"
            print(f"task failed: {details}", flush=True)
        finally:
            fl["push_task_output"](client, context, status, details)
            if beat.is_running:
                beat.stop()
            client.close()
        print(f"task {res.task.task_id}: {time.perf_counter() - started:.2f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emfl.flower.node", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default=None, help="the Unix socket to listen on")
    ap.add_argument("--data-dir", default=None, help="this node's copy of the data")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--settings", default=None, help="a run's settings (JSON file): read its data at start")
    ap.add_argument("--memory-dir", default=None, metavar="DIR",
                    help="the checkpoint folder in which this node keeps its clients' memory (default: emfl's)")
    ap.add_argument("--runtime-api", default=None, metavar="HOST:PORT",
                    help="be the executor of the SuperNode whose Runtime API is here (it runs with "
                         "--isolation process): run its ClientApp tasks in this process")
    args = ap.parse_args(argv)
    settings = None
    if args.settings:
        with open(args.settings) as f:
            settings = json.load(f)
    if args.runtime_api:
        execute(args.runtime_api, args.data_dir, args.threads, settings, memory_dir=args.memory_dir)
    else:
        serve(args.socket, args.data_dir, args.threads, settings, memory_dir=args.memory_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
