"""Seconds per round of the federated engine against a compute floor and a plain loop.

    python benchmarks/engine_speed.py [--task cifar10|femnist] [--rounds 5] [--device auto|cpu|cuda]

One round = 10 clients x one local epoch of SGD (batch 64 on CIFAR-10: 500 images a client;
batch 20 on FEMNIST: 204 images, a writer of average size) on the paper's LeNet-5, generated
images of the task's shape.  The paths are timed interleaved (one round of each in turn, after
one warm-up round each), and each is reported as min / median / max over ``--rounds`` rounds:

* ``engine FedAvg (loop)``: emfl's round, clients one after another (the CPU default);
* ``engine FedAvg (vmap)``: the clients batched with torch.func.vmap (the CUDA default);
* ``engine FedSparse``: FedSparse with its thresholds far below the norms, so that no unit is
  pruned while it is timed (equal structure: the gates' overhead alone; the script checks it);
* ``plain loop``: the textbook way: a deep copy of the model per client, a DataLoader,
  torch.optim.SGD, then the average of the state dicts.

The **compute floor** is a lower bound on a round: the forward and backward passes it must do,
each minibatch shape timed alone (no data handling, no optimiser, no copies), the fastest try,
times the number of such minibatches in a round.  The tries are taken in blocks of
``--floor-repeats`` per shape, one block before every timed round of every path, so that the
floor sees the machine in the same moments as the paths (a floor measured once, at the start,
moved by 12 % between runs on a shared 2-core machine and once came out above a path).  Printed:
the floor from the fastest try of each shape over the whole run (the one the ratios use), and the
median and slowest of the per-block floors.  Any way of training the round does at least this
work, so every path's ratio to the floor must be >= 1; the script stops with an error if one is
not (the floor would be wrong, not the path fast).
"""

import argparse
import copy
import statistics
import time

import torch
from torch.nn import functional as F

from emfl.nn.data import FederatedData, channel_stats
from emfl.nn.engine import Engine, resolve_device
from emfl.nn.config import RunConfig
from emfl.nn.models import make_model

SHAPES = {"cifar10": ((3, 32, 32), 10, 500, 64), "femnist": ((1, 28, 28), 62, 204, 20)}


def generated(task, clients=10):
    shape, classes, n, _ = SHAPES[task]
    g = torch.Generator().manual_seed(0)
    tx = [torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8) for _ in range(clients)]
    ty = [torch.randint(0, classes, (n,), generator=g) for _ in range(clients)]
    mean, std = channel_stats(torch.cat(tx))
    return FederatedData(task, classes, tx, ty, [x[:10] for x in tx], [y[:10] for y in ty], mean, std)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Floor:
    """Forward + backward passes of ``model`` at each batch size, timed alone, in blocks."""

    def __init__(self, model, shape, classes, device, batch_sizes, repeats):
        self.model = copy.deepcopy(model).to(device)
        self.device, self.repeats = device, repeats
        self.inputs = {b: (torch.randn(b, *shape, device=device), torch.randint(0, classes, (b,), device=device))
                       for b in sorted(set(batch_sizes))}
        self.blocks = []  # per block: {batch: [seconds of each try]}
        self.block(record=False)  # warm-up

    def block(self, record: bool = True) -> None:
        tries = {}
        for b, (x, y) in self.inputs.items():
            tries[b] = []
            for _ in range(self.repeats):
                self.model.zero_grad(set_to_none=True)
                sync(self.device)
                start = time.perf_counter()
                F.cross_entropy(self.model(x), y).backward()
                sync(self.device)
                tries[b].append(time.perf_counter() - start)
        if record:
            self.blocks.append(tries)

    def per_round(self, batches: list) -> dict:
        """The floor of a round of ``batches``: from the fastest try of each shape over all blocks
        (``min``), and the median and slowest of the blocks' own floors."""
        fastest = {b: min(min(t[b]) for t in self.blocks) for b in self.inputs}
        per_block = sorted(sum(min(t[b]) for b in batches) for t in self.blocks)
        return {"min": sum(fastest[b] for b in batches), "median": statistics.median(per_block),
                "max": per_block[-1], "blocks": len(per_block)}


def plain_round(model, data, device, lr, batch_size):
    states = []
    for s in range(data.num_clients):
        local = copy.deepcopy(model).to(device)
        opt = torch.optim.SGD(local.parameters(), lr=lr)
        ds = torch.utils.data.TensorDataset(data.normalize(data.train_x[s]), data.train_y[s])
        for x, y in torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True):
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            F.cross_entropy(local(x), y).backward()
            opt.step()
        states.append(local.state_dict())
    return {k: torch.stack([st[k] for st in states]).mean(0) for k in states[0]}


def interleaved(paths: dict, rounds: int, device, between=None) -> dict:
    """``{name: [seconds per round]}``, one round of each path in turn, after one warm-up each;
    ``between()`` runs before every timed round (outside its time)."""
    times = {name: [] for name in paths}
    for i in range(rounds + 1):
        for name, fn in paths.items():
            if i and between is not None:
                between()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i:
                times[name].append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(SHAPES), default="cifar10")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--floor-repeats", type=int, default=8, help="tries per shape in each block of the floor")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    shape, classes, n, bs = SHAPES[args.task]
    data = generated(args.task)
    model = make_model("lenet5", shape, classes)
    batches = [min(bs, n - b) for b in range(0, n, bs)] * data.num_clients  # every minibatch of a round
    floor = Floor(model, shape, classes, device, batches, args.floor_repeats)
    engines = {}
    for name, cfg in (("engine FedAvg (loop)", dict(algo="fedavg", client_batching="loop")),
                      ("engine FedAvg (vmap)", dict(algo="fedavg", client_batching="vmap")),
                      ("engine FedSparse", dict(algo="fedsparse", lam0=0.0))):
        engines[name] = Engine(RunConfig(task=args.task, rounds=10**6, clients_per_round=10, device=str(device), **cfg),
                               data)
    # thresholds far below the norms (tau = softplus(-20) ~ 2e-9): every gate stays on, nothing is
    # pruned, and the client still runs all of FedSparse's gate machinery
    engines["engine FedSparse"].server["v"].fill_(-20.0)
    model.to(device)
    paths = {name: e.run_round for name, e in engines.items()}
    paths["plain loop"] = lambda: plain_round(model, data, device, 0.05, bs)
    times = interleaved(paths, args.rounds, device, between=floor.block)
    floors = floor.per_round(batches)
    sparse = engines["engine FedSparse"]
    kept = sparse.algorithm.prune(sparse.server["w"], sparse.server["v"])[1]
    print(f"{args.task}: LeNet-5, 10 clients x {n} images, batch {bs}, device {device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds of each path, interleaved")
    print(f"compute floor: {len(batches)} forward + backward passes a round; {floors['blocks']} blocks of "
          f"{args.floor_repeats} tries per shape, one before each timed round: the fastest try of each shape "
          f"sums to {floors['min']:.3f} s/round (the blocks' floors: median {floors['median']:.3f}, "
          f"slowest {floors['max']:.3f})")
    print(f"{'':<22} {'s/round: min':>13} {'median':>8} {'max':>8} {'x floor':>8} {'x plain loop':>13} {'x FedAvg':>9}")
    plain = statistics.median(times["plain loop"])
    fedavg = statistics.median(times["engine FedAvg (loop)"])
    low = []
    for name, t in times.items():
        med = statistics.median(t)
        ratio = min(t) / floors["min"]
        low += [name] if ratio < 1 else []
        print(f"{name:<22} {min(t):>13.3f} {med:>8.3f} {max(t):>8.3f} {ratio:>8.2f} {med / plain:>13.2f} {med / fedavg:>9.2f}")
    print(f"FedSparse units pruned while timed: {int((kept == 0).sum())} of {kept.numel()}")
    if low:
        raise SystemExit(f"{', '.join(low)} ran below the compute floor: the floor is wrong, not the path fast")
    if int((kept == 0).sum()):
        raise SystemExit("FedSparse pruned units while timed: not equal structure")


if __name__ == "__main__":
    main()
