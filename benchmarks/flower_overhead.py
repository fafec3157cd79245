"""What running on Flower costs: the same run with `emfl run`'s engine, with Flower's simulation
and with a Flower deployment (a SuperLink and two SuperNodes on 127.0.0.1), per round.

    python benchmarks/flower_overhead.py [--algo fedavg] [--rounds 6] [--data-dir DIR]

The run: the paper's CIFAR-10 protocol (10 of 100 clients a round, one local epoch of SGD, LeNet-5),
from ``--data-dir`` (default ``$EMFL_DATA_DIR``, else ``../shared/data``).  Each path writes its run
JSON with an evaluation every round; a round's time is the difference of the ``seconds`` of
consecutive records (the server's wall time from sampling to the M-step, evaluation excluded), from
round 2 on (round 1 carries the start-up: Ray's actors, the SuperNodes' first ClientApp).  The
start-up is reported on its own as the wall time of the whole command minus the rounds.  All three
paths run one after another in this process's machine, so the ratios are measured in one run.
The engine trains the clients one after another on one thread; Flower's two nodes train theirs in
parallel, one thread each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def per_round(doc: dict) -> list:
    s = [0.0] + [r["seconds"] for r in doc["records"]]
    return [b - a for a, b in zip(s, s[1:])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="fedavg")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--data-dir", default=os.environ.get("EMFL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--without-simulation", action="store_true", help="the engine and the deployment only")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from emfl.flower.apps import simulate
    from emfl.flower.deploy import deploy
    from emfl.nn.config import make_config
    from emfl.nn.runner import run

    config = make_config(args.algo, task="cifar10", rounds=args.rounds, eval_every=1, device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="emfl-flower-bench-"))
    paths = {
        "engine (emfl run)": lambda out: run(config, out, data_dir=args.data_dir, progress=False, checkpoint_dir=tmp),
        "Flower simulation, 2 nodes": lambda out: simulate(config, out, supernodes=2, data_dir=args.data_dir,
                                                           checkpoint_dir=tmp),
        "Flower deployment, 2 SuperNodes": lambda out: deploy(config, out, supernodes=2, data_dir=args.data_dir,
                                                              checkpoint_dir=tmp),
    }
    if args.without_simulation:
        del paths["Flower simulation, 2 nodes"]
    rows = []
    for i, (name, go) in enumerate(paths.items()):
        start = time.perf_counter()
        doc = go(tmp / f"run{i}.json")
        wall = time.perf_counter() - start
        rounds = per_round(doc)
        rows.append((name, statistics.median(rounds[1:]), min(rounds[1:]), max(rounds[1:]), wall - sum(rounds[1:]),
                     doc["records"][-1]["global_acc"], doc["records"][-1]["bytes_down"] + doc["records"][-1]["bytes_up"]))
    base = rows[0][1]
    print(f"{args.algo}, CIFAR-10, 10 clients a round, rounds 2-{args.rounds} (cpu, {os.cpu_count()} cores)")
    print(f"{'path':34s} {'s/round (median)':>17s} {'min':>6s} {'max':>6s} {'x engine':>9s} {'start-up s':>11s}"
          f" {'global acc':>11s} {'bytes':>12s}")
    for name, med, lo, hi, startup, acc, nbytes in rows:
        print(f"{name:34s} {med:17.2f} {lo:6.2f} {hi:6.2f} {med / base:9.2f} {startup:11.1f} {acc:11.4f} {nbytes:12d}")
    same = len({(r[5], r[6]) for r in rows}) == 1
    print("same accuracy and bytes on every path:", same)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
