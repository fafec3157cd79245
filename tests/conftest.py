import numpy as np
import pytest

from emfl.linreg import Client, make_federated_linreg


@pytest.fixture
def tiny():
    """1-D client a person can do by hand: X = [1, 1]^T, y = [1, 3], sigma2 = 1.

    A = X^T X / sigma2 = 2, b = X^T y / sigma2 = 4."""
    return Client(np.array([[1.0], [1.0]]), np.array([1.0, 3.0]), 1.0)


@pytest.fixture
def fed():
    return make_federated_linreg(S=6, d=3, lam_true=2.0, n_range=(8, 30), seed=3)


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(tmp_path_factory, monkeypatch):
    """Runs started by the tests keep their checkpoints in a temporary folder, not the user's cache."""
    monkeypatch.setenv("EMFL_CHECKPOINT_DIR", str(tmp_path_factory.mktemp("checkpoints")))


@pytest.fixture(autouse=True, scope="session")
def _figures_in_tmp(tmp_path_factory):
    """Figures the tests draw go to a temporary folder (``./dev test`` sets one too), never to figures/."""
    import os

    if not os.environ.get("EMFL_FIGURES_DIR"):
        os.environ["EMFL_FIGURES_DIR"] = str(tmp_path_factory.mktemp("figures"))
