"""Seconds per round of the federated engine against the machine's compute floor and a plain loop.

    python benchmarks/engine_speed.py [--task cifar10|femnist] [--rounds 3] [--device auto|cpu|cuda]

One round = 10 clients x one local epoch of SGD (batch 64 on CIFAR-10: 500 images a client;
batch 20 on FEMNIST: 204 images, a writer of average size) on the paper's LeNet-5, generated
images of the task's shape.  Reported, each a median over rounds after one warm-up round:

* ``engine (loop)``: emfl's round, clients one after another (the CPU default);
* ``engine (vmap)``: emfl's round, the clients batched with torch.func.vmap (the CUDA default);
* ``plain loop``: the textbook way: a deep copy of the model per client, a DataLoader, torch.optim.SGD,
  then the average of the state dicts;
* ``compute floor``: training FLOPs per round (6 x multiply-adds x images) divided by the FLOP/s
  this machine reaches on the same model's forward+backward at batch 256.

Ratios are to the floor and to the plain loop, all from one run (this machine is noisy).
"""

import argparse
import copy
import statistics
import time

import torch
from torch.nn import functional as F

from emfl.nn.data import FederatedData, channel_stats
from emfl.nn.engine import Engine, RunConfig, resolve_device
from emfl.nn.models import make_model

SHAPES = {"cifar10": ((3, 32, 32), 10, 500, 64), "femnist": ((1, 28, 28), 62, 204, 20)}


def generated(task, clients=10):
    shape, classes, n, _ = SHAPES[task]
    g = torch.Generator().manual_seed(0)
    tx = [torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8) for _ in range(clients)]
    ty = [torch.randint(0, classes, (n,), generator=g) for _ in range(clients)]
    mean, std = channel_stats(torch.cat(tx))
    return FederatedData(task, classes, tx, ty, [x[:10] for x in tx], [y[:10] for y in ty], mean, std)


def macs_per_image(model, shape):
    total = 0

    def hook(module, inp, out):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            total += out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features * out.shape[0]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(model, shape, classes, device, batch=256, repeats=5):
    """Training FLOP/s the machine reaches on this model at a large batch."""
    model = copy.deepcopy(model).to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    flops = 6 * macs_per_image(model.cpu(), shape) * batch
    model.to(device)
    times = []
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return flops / statistics.median(times)


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


def timed(fn, rounds, device):
    times = []
    for i in range(rounds + 1):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(SHAPES), default="cifar10")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    shape, classes, n, bs = SHAPES[args.task]
    data = generated(args.task)
    model = make_model("lenet5", shape, classes)
    flops_round = 6 * macs_per_image(model, shape) * n * data.num_clients
    rate = throughput(model, shape, classes, device)
    floor = flops_round / rate
    results = {}
    for mode in ("loop", "vmap"):
        engine = Engine(RunConfig(task=args.task, rounds=10**6, clients_per_round=10, device=str(device),
                                  client_batching=mode), data)
        results[f"engine ({mode})"] = timed(engine.run_round, args.rounds, device)
    model.to(device)
    results["plain loop"] = timed(lambda: plain_round(model, data, device, 0.05, bs), args.rounds, device)
    print(f"{args.task}: LeNet-5, 10 clients x {n} images, batch {bs}, device {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"training FLOPs per round {flops_round / 1e9:.1f} G; measured {rate / 1e9:.1f} GFLOP/s at batch 256 "
          f"-> compute floor {floor:.3f} s/round")
    print(f"{'':<16} {'s/round':>9} {'x floor':>8} {'x plain loop':>13}")
    for name, t in results.items():
        print(f"{name:<16} {t:>9.3f} {t / floor:>8.2f} {t / results['plain loop']:>13.2f}")


if __name__ == "__main__":
    main()
