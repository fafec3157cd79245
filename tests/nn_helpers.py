"""Small generated federated data sets for the engine tests (no files needed)."""

from emfl.nn.data import FederatedData, generated_federation


def tiny_federation(clients=6, n=24, m=8, shape=(3, 32, 32), classes=10, seed=0) -> FederatedData:
    return generated_federation(clients, n, m, shape, classes, seed)
