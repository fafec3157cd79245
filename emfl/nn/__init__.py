"""The federated neural-network engine: real data (CIFAR-10, FEMNIST), the paper's models, a
round loop with the paper's protocol, metrics, exact communication accounting, checkpoints."""
