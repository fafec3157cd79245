"""Time and memory of FedPA's client delta as the dimension d grows.

    python benchmarks/fedpa_delta.py [--l 10] [--dims 1000 10000 100000 1000000]

For each d: the dynamic-programming delta (emfl.fedpa.delta_dp, never forms Sigma) on NumPy
float64 and on torch float32 (CPU), median seconds over repeats and peak extra memory
(tracemalloc, NumPy only), against the explicit solve (forms the d x d Sigma) where that fits.
Ratios in the last columns are per d relative to the smallest d: constant means linear growth.
"""

import argparse
import time
import tracemalloc

import numpy as np
import torch

from emfl import fedpa


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--l", type=int, default=10, help="posterior samples per client")
    parser.add_argument("--rho", type=float, default=0.01)
    parser.add_argument("--dims", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--exact-max-d", type=int, default=2_000, help="largest d for the explicit solve")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"l = {args.l} samples, rho = {args.rho}; times are medians, memory is peak extra bytes")
    print(f"{'d':>9} {'dp numpy s':>11} {'us per d':>9} {'dp torch32 s':>13} {'peak MiB':>9} {'MiB per (l d)':>14} {'exact s':>9}")
    base = None
    for d in args.dims:
        X = rng.normal(size=(args.l, d))
        theta = rng.normal(size=d)
        repeats = max(3, int(2e6 // d))
        t_np = median_seconds(lambda: fedpa.delta_dp(X, theta, args.rho), repeats)
        Xt, tt = torch.from_numpy(X).float(), torch.from_numpy(theta).float()
        t_torch = median_seconds(lambda: fedpa.delta_dp(Xt, tt, args.rho), repeats)
        tracemalloc.start()
        fedpa.delta_dp(X, theta, args.rho)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        t_exact = median_seconds(lambda: fedpa.delta_exact(X, theta, args.rho), 3) if d <= args.exact_max_d else float("nan")
        per_d = t_np / d * 1e6
        base = base or per_d
        print(f"{d:>9} {t_np:>11.5f} {per_d:>9.4f} {t_torch:>13.5f} {peak / 2**20:>9.2f} {peak / 2**20 / (args.l * d) * 1e6:>14.3f} {t_exact:>9.4f}")

    d = 100_000
    print(f"\nd = {d}: growth in l (O(l^2 d): the last column should stay about constant)")
    print(f"{'l':>4} {'dp numpy s':>11} {'s / l^2':>10}")
    for l in (5, 10, 20, 40):
        X = rng.normal(size=(l, d))
        t = median_seconds(lambda: fedpa.delta_dp(X, X[0] * 0, args.rho), 3)
        print(f"{l:>4} {t:>11.4f} {t / l**2:>10.6f}")


if __name__ == "__main__":
    main()
