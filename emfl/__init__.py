"""emfl: federated learning seen as Expectation-Maximization.

The server holds the parameters of a prior over the clients' parameters; a round of federated
learning is a round of (hard) EM: clients compute an E-step on their own data, the server an
M-step over what they send.  See the tutorials for the derivations.
"""

from emfl import linreg, priors, em, viz, spike_slab
from emfl.em import (
    FederatedAlgorithm,
    History,
    ServerState,
    exact_em,
    fedavg,
    fedavg_fixed_point,
    fedprox,
    hard_em,
    run,
)
from emfl.linreg import Client, FederatedLinReg, make_federated_linreg
from emfl.priors import GaussianPrior, LaplacePrior, MixturePrior, make_prior
from emfl.viz import save_figure, setup_notebook

__version__ = "0.1.0"

__all__ = [
    "linreg", "priors", "em", "viz", "spike_slab",
    "FederatedAlgorithm", "History", "ServerState",
    "exact_em", "hard_em", "fedavg", "fedprox", "fedavg_fixed_point", "run",
    "Client", "FederatedLinReg", "make_federated_linreg",
    "GaussianPrior", "LaplacePrior", "MixturePrior", "make_prior",
    "save_figure", "setup_notebook",
]
