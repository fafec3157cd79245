"""The speed table: emfl's engine, a plain PyTorch loop and Flower's simulation, doing the same work.

    python benchmarks/flower_speed.py [--cycles 3] [--rounds 12] [--threads 2]

Flower is an optional extra (``pip install -e '.[flower]'``); without it the table has the other
two paths and says so.

The work of a round, the same on every path: 10 clients, each one local epoch of SGD (lr 0.05,
batch 64) on its 500 generated CIFAR-10-shaped images with the paper's LeNet-5, then the server
averages.  (The engine's server applies Adam to the averaged difference, as the paper's FedAvg
does; a plain average costs the same.)  Paths:

* ``engine FedAvg``: ``emfl.nn.engine.Engine`` with ``--algo fedavg``, clients one after another;
* ``plain loop``: the textbook way (a deep copy of the model per client, a DataLoader,
  ``torch.optim.SGD``, the mean of the state dicts: ``engine_speed.plain_round``);
* ``Flower, A actors x B threads``: Flower's simulation (``flwr.simulation.run_simulation``, the
  Ray backend) with a ``ClientApp`` that trains like the plain loop and the ``FedAvg`` strategy
  sampling all 10 clients; ``A x B = --threads``.

Each path runs in its own Python process, so that "total" is what a user waits for: interpreter
start, imports, data, start-up (Ray's, for Flower) and every round.  The processes are
interleaved: cycle 1 runs each path once, then cycle 2, and so on, so that a slow spell of the
machine falls on all paths alike.  Per round: the time between the ends of consecutive rounds
from round 2 on (round 1 carries the warm-up, and Flower's actors' start-up, and is reported on
its own), pooled over the cycles, as min / median / max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # engine_speed, beside this file
CLIENTS, LR, BATCH = 10, 0.05, 64


# --------------------------------------------------------------------------- the paths (one process each)


def _data():
    from engine_speed import generated

    return generated("cifar10", CLIENTS)


def _model():
    from emfl.nn.models import make_model

    return make_model("lenet5", (3, 32, 32), 10)


def path_engine(rounds: int, threads: int) -> list:
    import torch

    from emfl.nn.engine import Engine

    from emfl.nn.config import RunConfig

    torch.set_num_threads(threads)
    engine = Engine(RunConfig(task="cifar10", algo="fedavg", rounds=rounds, clients_per_round=CLIENTS,
                              batch_size=BATCH, client_lr=LR, device="cpu", client_batching="loop"), _data())
    ends = [time.perf_counter()]
    for _ in range(rounds):
        engine.run_round()
        ends.append(time.perf_counter())
    return ends


def path_plain(rounds: int, threads: int) -> list:
    import torch

    from engine_speed import plain_round

    torch.set_num_threads(threads)
    data = _data()
    model = _model()
    ends = [time.perf_counter()]
    for _ in range(rounds):
        model.load_state_dict(plain_round(model, data, torch.device("cpu"), LR, BATCH))
        ends.append(time.perf_counter())
    return ends


def _flower_client_app(threads: int):
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from torch.nn import functional as F

    app = ClientApp()
    cache = {}

    @app.train()
    def train(msg: Message, context: Context):
        torch.set_num_threads(threads)
        if "data" not in cache:  # one copy per actor
            cache["data"] = _data()
        data = cache["data"]
        s = int(context.node_config["partition-id"])
        model = _model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        ds = torch.utils.data.TensorDataset(data.normalize(data.train_x[s]), data.train_y[s])
        for x, y in torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(ds)})})
        return Message(content=content, reply_to=msg)

    return app


def path_flower(rounds: int, threads: int, actors: int) -> list:
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    ends = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context):
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=CLIENTS,
                          min_available_nodes=CLIENTS)

        def evaluate(server_round, arrays):  # called before round 1 and after every round
            ends.append(time.perf_counter())
            return None

        strategy.start(grid=grid, initial_arrays=ArrayRecord(_model().state_dict()), num_rounds=rounds,
                       evaluate_fn=evaluate)

    per_actor = threads // actors
    run_simulation(server_app=server, client_app=_flower_client_app(per_actor), num_supernodes=CLIENTS,
                   backend_config={"client_resources": {"num_cpus": per_actor, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": threads, "include_dashboard": False}})
    if len(ends) != rounds + 1:
        raise SystemExit(f"Flower ran {len(ends) - 1} of {rounds} rounds")
    return ends


# --------------------------------------------------------------------------- the driver


def _paths(threads: int, flower: bool) -> dict:
    paths = {"engine FedAvg": ["engine"], "plain loop": ["plain"]}
    if flower:
        for actors in sorted({threads, 1}, reverse=True):
            paths[f"Flower, {actors} actor{'s' * (actors > 1)} x {threads // actors} thread{'s' * (threads // actors > 1)}"] = \
                ["flower", str(actors)]
    return paths


def _run_child(args: list, rounds: int, threads: int, timeout: float) -> tuple:
    """Run one path in a fresh process: ``(total seconds, [round ends])``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ends.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RAY_DEDUP_LOGS": "0"}
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", *args, "--rounds", str(rounds),
                                   "--threads", str(threads), "--ends", str(out)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise SystemExit(f"{' '.join(args)} did not finish in {timeout:.0f} s (a Ray node that failed to "
                             f"start hangs; see /tmp/ray/session_latest/logs):\n{(err.output or '')[-3000:]}")
        total = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
        return total, json.loads(out.read_text())


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    versions = f"Python {platform.python_version()}, torch {torch.__version__}"
    try:
        import flwr

        versions += f", flwr {flwr.__version__}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}; {versions}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3, help="times each path runs, interleaved")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per run")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every path")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--ends", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 2 or args.cycles < 1 or args.threads < 1:
        parser.error("need --rounds >= 2, --cycles >= 1 and --threads >= 1")
    if args.child:
        kind = args.child[0]
        ends = (path_engine(args.rounds, args.threads) if kind == "engine" else
                path_plain(args.rounds, args.threads) if kind == "plain" else
                path_flower(args.rounds, args.threads, int(args.child[1])))
        Path(args.ends).write_text(json.dumps(ends))
        return
    try:
        import flwr  # noqa: F401
        import ray  # noqa: F401

        flower, note = True, ""
    except ImportError:
        flower, note = False, "Flower is not installed (pip install -e '.[flower]'): its rows are missing."
    paths = _paths(args.threads, flower)
    rounds = {name: [] for name in paths}
    first = {name: [] for name in paths}
    totals = {name: [] for name in paths}
    for c in range(args.cycles):
        for name, child in paths.items():
            total, ends = _run_child(child, args.rounds, args.threads, timeout=120 + 60 * args.rounds)
            gaps = [b - a for a, b in zip(ends, ends[1:])]
            first[name].append(gaps[0])
            rounds[name] += gaps[1:]
            totals[name].append(total)
            print(f"cycle {c + 1}/{args.cycles}: {name}: {total:.1f} s in all, "
                  f"{statistics.median(gaps[1:]):.3f} s a round", file=sys.stderr)
    base_round = statistics.median(rounds["engine FedAvg"])
    base_total = statistics.median(totals["engine FedAvg"])
    print(f"machine: {machine()}")
    print(f"work: {args.rounds} rounds of {CLIENTS} clients x 500 images (LeNet-5, batch {BATCH}), "
          f"{args.threads} threads per path, {args.cycles} interleaved cycles")
    print()
    print("| path | s/round: min | median | max | x engine | round 1 (s) | total (s) | x engine |")
    print("|---|---|---|---|---|---|---|---|")
    for name in paths:
        r, t = rounds[name], totals[name]
        print(f"| {name} | {min(r):.3f} | {statistics.median(r):.3f} | {max(r):.3f} | "
              f"{statistics.median(r) / base_round:.2f} | {statistics.median(first[name]):.2f} | "
              f"{statistics.median(t):.1f} | {statistics.median(t) / base_total:.2f} |")
    if note:
        print()
        print(note)


if __name__ == "__main__":
    main()
