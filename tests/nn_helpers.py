"""Small generated federated data sets for the engine tests (no files needed)."""

import numpy as np
import torch

from emfl.nn.data import FederatedData, channel_stats


def tiny_federation(clients=6, n=24, m=8, shape=(3, 32, 32), classes=10, seed=0) -> FederatedData:
    g = torch.Generator().manual_seed(seed)
    tx = [torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8) for _ in range(clients)]
    ty = [torch.randint(0, classes, (n,), generator=g) for _ in range(clients)]
    ex = [torch.randint(0, 256, (m, *shape), generator=g, dtype=torch.uint8) for _ in range(clients)]
    ey = [torch.randint(0, classes, (m,), generator=g) for _ in range(clients)]
    mean, std = channel_stats(torch.cat(tx))
    return FederatedData("cifar10" if shape[0] == 3 else "femnist", classes, tx, ty, ex, ey, mean, std, {"source": "generated"})
