"""Seconds per round against structural sparsity: clients that compute only what survives.

    python benchmarks/sliced_speed.py [--task cifar10|femnist] [--rounds 5] [--checkpoint PATH]

One round = 10 clients x one local epoch of SGD on the paper's LeNet-5 (as in engine_speed.py:
500 images a client, batch 64 on CIFAR-10; 204 images, batch 20 on FEMNIST), generated images
of the task's shape.  Every path starts each timed round from the same server state (the
structure does not drift while it is timed), the paths take turns round by round after one
warm-up round each, and each is reported by its median round, as a ratio to FedAvg's median
from the same run:

* ``fedavg``: the reference;
* ``fedavg (channels-first)``: FedAvg with the model and the minibatches in the default
  (channels-first) memory group_map, which the engine used before it trained in channels-last;
* ``feddrop``: the paper's CIFAR-10 rates (10 % of conv filters, 50 % of fc units, 1 % of the
  input and output layers' units dropped per client), clients on their sub-models
  (``client_compute = sliced``) and on the masked dense model (``dense``);
* ``fedsparse-high``: a server that has pruned the units fedsparse-high's CIFAR-10 run had pruned
  at round 100 (kept: conv1 14 of 32, conv2 52 of 64, fc1 392 of 512, read from that run's
  checkpoint), sliced and dense.  ``--checkpoint`` takes the pruned units from any FedSparse
  checkpoint instead (read with ``weights_only=True``);
* ``fedsparse k``: a share ``k`` of every layer's units pruned (0.25, 0.5, 0.75), sliced: the
  curve of seconds against structural sparsity.

Targets (the issue that asked for this): fedsparse-high <= 0.5x FedAvg, feddrop <= 0.9x.

Last, the widths: one forward and backward pass of a minibatch through LeNet-5 at the widths
of fedsparse-high's structure (14, 52, 392 units) and at those widths rounded up to multiples of 8
(16, 56, 392: what :data:`emfl.nn.slicing.WIDTH_STEP` holds), against the full widths.
"""

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from emfl.nn import gates
from emfl.nn.algorithms.fedsparse import PRUNE, T
from emfl.nn.config import make_config
from emfl.nn.engine import Engine, resolve_device
from emfl.nn.models import LeNet5
from emfl.nn.runner import load_checkpoint

from engine_speed import SHAPES, generated, sync

# fedsparse-high on CIFAR-10 (seed 0, sparse_reg example), units its server kept at round 100
HIGH_AT_100 = (14, 52, 392)
TARGETS = {"fedsparse-high": 0.5, "feddrop": 0.9}


def keep_counts(group_map, counts, seed=0):
    """A unit mask keeping ``counts[k]`` units of layer ``k`` (drawn at random: the cost of a
    round depends on how many units survive, not on which)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros(group_map.num_groups)
    for (a, b), k in zip(group_map.layer_slices, counts):
        keep[a + torch.randperm(b - a, generator=g)[:k]] = 1
    return keep


def keep_from_checkpoint(path, group_map):
    state = load_checkpoint(path)  # the runner's reader: checksummed, weights_only, no code unpickled
    server = state["server"]
    if "v" not in server:
        raise SystemExit(f"{path} is not a FedSparse checkpoint (its server state has no thresholds v)")
    w, v = server["w"].cpu(), server["v"].cpu()
    return (gates.gate_prob(group_map.norms(w), v, T) > PRUNE).float()


def pruned(engine, keep):
    """The engine's server with the units ``keep == 0`` pruned (their thresholds far above any norm)."""
    v = engine.server["v"].clone()
    v[keep.to(v.device) == 0] = 50.0
    return {**engine.server, "v": v}


def lenet(widths, shape, classes, device):
    """A channels-last LeNet-5 with ``widths`` = (conv1, conv2, fc1) units."""
    c1, c2, f = widths
    m = LeNet5(shape, classes)
    m.conv1 = torch.nn.Conv2d(shape[0], c1, 5)
    m.conv2 = torch.nn.Conv2d(c1, c2, 5)
    m.fc1 = torch.nn.Linear(m.fc1.in_features // 64 * c2, f)
    m.fc2 = torch.nn.Linear(f, classes)
    return m.to(device).to(memory_format=torch.channels_last)


def time_widths(task, device, tries=40):
    shape, classes, _, batch = SHAPES[task]
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    models = {w: lenet(w, shape, classes, device) for w in ((32, 64, 512), HIGH_AT_100, (16, 56, 392))}
    times = {w: [] for w in models}
    for _ in range(tries):  # interleaved
        for w, m in models.items():
            m.zero_grad(set_to_none=True)
            sync(device)
            t0 = time.perf_counter()
            F.cross_entropy(m(x), y).backward()
            sync(device)
            times[w].append(time.perf_counter() - t0)
    full = statistics.median(times[(32, 64, 512)])
    print(f"\none forward + backward at batch {batch}, median of {tries}:")
    for w, ts in times.items():
        print(f"  widths {w}: {statistics.median(ts) * 1000:.2f} ms, {statistics.median(ts) / full:.2f} of the full widths")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=list(SHAPES), default="cifar10")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per path (after one warm-up round)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--checkpoint", help="take fedsparse-high's pruned units from this FedSparse checkpoint")
    args = ap.parse_args()
    device = resolve_device(args.device)
    data = generated(args.task)
    _, _, _, batch = SHAPES[args.task]
    base = dict(task=args.task, rounds=10**6, clients_per_round=10, batch_size=batch, device=args.device,
                client_batching="loop")

    paths = {}  # name -> (engine, server state to start every round from)
    e = Engine(make_config("fedavg", **base), data)
    paths["fedavg"] = (e, e.server)
    e = Engine(make_config("fedavg", **base), data)
    e.model.to(memory_format=torch.contiguous_format)
    draw = e.batches
    e.batches = lambda s, gen, draw=draw: ((x.contiguous(), y) for x, y in draw(s, gen))
    paths["fedavg (channels-first)"] = (e, e.server)
    for compute in ("sliced", "dense"):
        e = Engine(make_config("feddrop", drop_conv=0.1, drop_fc=0.5, drop_io=0.01, client_compute=compute,
                             **base), data)
        paths[f"feddrop ({compute})"] = (e, e.server)
    probe = Engine(make_config("fedsparse", **base), data)
    group_map = probe.algorithm.group_map
    high = keep_from_checkpoint(args.checkpoint, group_map) if args.checkpoint else keep_counts(group_map, HIGH_AT_100)
    keeps = {"fedsparse-high": high}
    for k in (0.25, 0.5, 0.75):
        keeps[f"fedsparse {k:.2f} pruned"] = keep_counts(
            group_map, [b - a - round(k * (b - a)) for a, b in group_map.layer_slices], seed=1)
    sparsity = {}
    for name, keep in keeps.items():
        for compute in ("sliced", "dense") if name == "fedsparse-high" else ("sliced",):
            e = Engine(make_config("fedsparse-high", client_compute=compute, **base), data)
            label = f"{name} ({compute})"
            paths[label] = (e, pruned(e, keep))
            sparsity[label] = group_map.sparsity(keep)["sparsity"]

    times = {name: [] for name in paths}
    for r in range(args.rounds + 1):
        for name, (e, start) in paths.items():
            e.server = start
            sync(device)
            t0 = time.perf_counter()
            e.run_round()
            sync(device)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)

    ref = statistics.median(times["fedavg"])
    print(f"{args.task}, LeNet-5, 10 clients x 1 local epoch, {device}, {torch.get_num_threads()} threads; "
          f"median of {args.rounds} rounds each, interleaved\n")
    print(f"| path | structural sparsity | s / round (median) | x FedAvg |")
    print(f"|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        sp = sparsity.get(name)
        sp = "0" if name.startswith("fedavg") else ("per client" if name.startswith("feddrop") else f"{sp:.3f}")
        print(f"| {name} | {sp} | {med:.3f} | {med / ref:.2f} |")
    print()
    for key, target in TARGETS.items():
        ratio = statistics.median(times[f"{key} (sliced)"]) / ref
        print(f"{key} (sliced) / fedavg = {ratio:.2f}   target <= {target}: {'met' if ratio <= target else 'NOT met'}")
    time_widths(args.task, device)


if __name__ == "__main__":
    main()
