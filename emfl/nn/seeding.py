"""Where a run's randomness comes from: every random stream is seeded by a hash of the run's seed,
the stream's name, the round and the client, so that a client's draws do not depend on which
process trains it or on whether the run was resumed (a resumed run repeats an uninterrupted one
bit for bit on the same device)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["derive_seed", "sample_clients", "local_model_ages", "ClientJob"]


def derive_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (SHA-256 of their repr): the same parts, the same seed, everywhere."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def sample_clients(seed: int, rnd: int, num_clients: int, clients_per_round: int) -> np.ndarray:
    """The clients of round ``rnd`` (0-based): drawn without replacement, seeded by (seed, round)."""
    rng = np.random.default_rng(derive_seed(seed, "clients", rnd))
    return rng.choice(num_clients, size=min(clients_per_round, num_clients), replace=False)


def local_model_ages(seed: int, rounds: int, num_clients: int, clients_per_round: int) -> np.ndarray:
    """For every client seen in the first ``rounds`` rounds, how many rounds old its last
    communicated model is at the end: what local accuracy averages over."""
    last = {}
    for rnd in range(rounds):
        for s in sample_clients(seed, rnd, num_clients, clients_per_round):
            last[int(s)] = rnd + 1
    return np.array([rounds - r for r in last.values()])


@dataclass
class ClientJob:
    """Client ``s``'s part of round ``rnd``: its random streams, seeded by (seed, stream, round,
    client); ``memory``, what the client kept from the last round it took part in (None at
    first); ``known``, on the server's side only, what the server kept of its replies
    (``Algorithm.remember``; None at first and on the client's side)."""

    seed: int
    rnd: int
    s: int
    memory: Any = None
    known: Any = None
    gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.rnd, self.s = int(self.rnd), int(self.s)
        self.gen = self.generator("client")  # minibatch order and the client's own draws

    def generator(self, stream: str) -> torch.Generator:
        """A CPU generator for one more random stream of this client in this round."""
        return torch.Generator().manual_seed(derive_seed(self.seed, stream, self.rnd, self.s))
