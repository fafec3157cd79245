"""emfl: federated learning seen as Expectation-Maximization.

The server holds the parameters of a prior over the clients' parameters; a round of federated
learning is a round of (hard) EM: clients compute an E-step on their own data, the server an
M-step over what they send.  See the tutorials for the derivations.
"""

import importlib

# what `import emfl` offers, imported when first used (so that a process that needs one corner of
# emfl, such as a deployment's ClientApp, does not pay for scipy and matplotlib)
_SUBMODULES = {"linreg", "priors", "em", "viz", "spike_slab"}
_NAMES = {
    "FederatedAlgorithm": "em", "History": "em", "ServerState": "em", "exact_em": "em", "fedavg": "em",
    "fedavg_fixed_point": "em", "fedprox": "em", "hard_em": "em", "run": "em",
    "Client": "linreg", "FederatedLinReg": "linreg", "make_federated_linreg": "linreg",
    "GaussianPrior": "priors", "LaplacePrior": "priors", "MixturePrior": "priors", "make_prior": "priors",
    "save_figure": "viz", "setup_notebook": "viz",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"emfl.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"emfl.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'emfl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | set(_NAMES))


__version__ = "0.1.0"

__all__ = [
    "linreg", "priors", "em", "viz", "spike_slab",
    "FederatedAlgorithm", "History", "ServerState",
    "exact_em", "hard_em", "fedavg", "fedprox", "fedavg_fixed_point", "run",
    "Client", "FederatedLinReg", "make_federated_linreg",
    "GaussianPrior", "LaplacePrior", "MixturePrior", "make_prior",
    "save_figure", "setup_notebook",
]
