"""A small task for the information plane: all 4,096 patterns of 12 bits, each labelled 0 or 1
by a fixed quadratic rule (half the patterns each), learnt by a small tanh network in seconds on a
CPU.  The setting of Shwartz-Ziv and Tishby's information-plane study (12 binary inputs, a
12-10-7-5-4-3-2 tanh network), with a rule of our own: every input is distinct, so for a
deterministic network ``I(X;T) = H(T)``.

Each pattern is stored as a 1 x 1 x 12 image of 0 and 255, so that the engine trains on it like on
CIFAR-10 or FEMNIST.  Clients hold the training patterns IID (``alpha=None``) or with label
proportions drawn from a Dirichlet(``alpha``) (small ``alpha``: strong skew), as many each.
"""

from __future__ import annotations

import numpy as np
import torch

from emfl.nn.data import FederatedData, channel_stats, sample_with_proportions

__all__ = ["BITS", "bit_patterns", "bits_federation"]

BITS = 12


def bit_patterns(seed: int = 0) -> tuple:
    """``(x, y)``: the 4,096 patterns of 12 bits (rows of 0/1, in counting order) and their labels,
    ``1`` where the quadratic score ``z a + z B z`` (``z = 2x - 1``, ``a`` and the upper triangle
    ``B`` drawn from ``seed``) is above its median, so exactly half are 1."""
    x = (np.arange(2 ** BITS)[:, None] >> np.arange(BITS)[::-1]) & 1
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(BITS)
    B = np.triu(rng.standard_normal((BITS, BITS)), 1) / np.sqrt(BITS)
    z = 2.0 * x - 1.0
    score = z @ a + np.einsum("ni,ij,nj->n", z, B, z)
    y = (score > np.median(score)).astype(np.int64)
    return x.astype(np.uint8), y


def bits_federation(clients: int = 10, alpha: float | None = None, test_share: float = 0.2,
                    seed: int = 0) -> FederatedData:
    """The patterns shared among ``clients`` clients: a held-out ``test_share`` of them is the
    global test set (each client tests on a draw from it with its own label proportions), the rest
    are dealt out, ``len // clients`` to each, IID or Dirichlet(``alpha``)-skewed by label."""
    if isinstance(clients, bool) or not isinstance(clients, (int, np.integer)) or clients < 1:
        raise ValueError(f"clients must be a whole number >= 1; got {clients!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha must be None (IID) or a positive Dirichlet concentration; got {alpha!r}")
    x, y = bit_patterns(0)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_test = int(round(test_share * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    n_s, m_s = len(train) // clients, n_test // clients
    q = [np.full(2, 0.5) if alpha is None else rng.dirichlet([alpha, alpha]) for _ in range(clients)]
    pools = [list(train[y[train] == k]) for k in (0, 1)]
    tr = [sample_with_proportions(pools, q[s], n_s, rng) for s in range(clients)]
    te = []
    for s in range(clients):  # test draws with the client's own proportions, from the whole test pool
        te.append(sample_with_proportions([list(rng.permutation(test[y[test] == k])) for k in (0, 1)], q[s], m_s, rng))
    img = torch.from_numpy(x * 255).view(-1, 1, 1, BITS)
    lab = torch.from_numpy(y)
    tx = [img[i] for i in tr]
    mean, std = channel_stats(torch.cat(tx))
    return FederatedData("bits", 2, tx, [lab[i] for i in tr], [img[i] for i in te], [lab[i] for i in te], mean, std,
                         {"source": "generated", "split": "iid" if alpha is None else "dirichlet", "alpha": alpha,
                          "seed": seed}, global_x=img[test], global_y=lab[test])
