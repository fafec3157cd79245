"""What ``--precision float64`` costs: a FedAvg round and an evaluation of the paper's LeNet-5 in
float64 against float32, interleaved, on generated CIFAR-10-shaped images (no data needed), one
torch thread.  Prints the median times and their ratios, measured in one run (machines are noisy;
ratios travel better than seconds).

    .venv/bin/python benchmarks/precision_speed.py [--repeats 3] [--clients 4] [--images 500]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from emfl.nn.data import generated_federation
from emfl.nn.engine import Engine
from emfl.nn.config import RunConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4, help="clients a round")
    ap.add_argument("--images", type=int, default=500, help="training images per client (the paper's shard: 500)")
    ap.add_argument("--test-images", type=int, default=1000, help="test images evaluated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = generated_federation(args.clients, args.images, args.test_images // args.clients, (3, 32, 32), 10, 0)
    engines = {p: Engine(RunConfig(precision=p, clients_per_round=args.clients, device="cpu"), data)
               for p in ("float32", "float64")}
    times = {(p, what): [] for p in engines for what in ("round", "evaluation")}
    for _ in range(args.repeats):
        for p, e in engines.items():  # interleaved: a drift of the machine hits both alike
            start = time.perf_counter()
            e.run_round()
            times[(p, "round")].append(time.perf_counter() - start)
            start = time.perf_counter()
            e.evaluate()
            times[(p, "evaluation")].append(time.perf_counter() - start)
    print(f"LeNet-5, {args.clients} clients x {args.images} images a round, {args.test_images} test images, "
          f"1 thread, {torch.backends.cpu.get_cpu_capability()} kernels, median of {args.repeats}")
    for what in ("round", "evaluation"):
        f32, f64 = (statistics.median(times[(p, what)]) for p in ("float32", "float64"))
        print(f"{what:<10}  float32 {f32:6.2f} s   float64 {f64:6.2f} s   ratio {f64 / f32:.1f}x")


if __name__ == "__main__":
    main()
