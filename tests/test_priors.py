"""Priors and their M-steps (Eq. 11, 46, 50-52), on numbers a person can check."""

import numpy as np
import pytest
from scipy import optimize, stats

from emfl.priors import GaussianPrior, LaplacePrior, MixturePrior, make_prior


def test_gaussian_log_prob_is_a_normal_density():
    p = GaussianPrior(4.0)
    expected = stats.multivariate_normal([1, 2], np.eye(2) / 4).logpdf([0, 0])
    assert p.log_prob([0.0, 0.0], [1.0, 2.0]) == pytest.approx(expected)


def test_gaussian_m_step_is_the_average_eq11():
    phis = np.array([[0.0, 0.0], [2.0, 4.0]])
    assert GaussianPrior(1.0).m_step(phis).tolist() == [1.0, 2.0]
    # a prior precision proportional to client size gives FedAvg's weighted average
    assert GaussianPrior(1.0).m_step(phis, weights=[1, 3]).tolist() == [1.5, 3.0]


def test_gaussian_m_step_maximises_eq10():
    rng = np.random.default_rng(0)
    phis = rng.normal(size=(7, 3))
    p = GaussianPrior(2.5)
    numeric = optimize.minimize(lambda w: -sum(p.log_prob(f, w) for f in phis), np.zeros(3), tol=1e-12).x
    np.testing.assert_allclose(p.m_step(phis), numeric, atol=1e-6)


def test_laplace_log_prob_and_median_eq46():
    p = LaplacePrior(2.0)
    # log(lam/2) - lam |x| per coordinate: 0 - 2 * (1 + 3)
    assert p.log_prob([1.0, -3.0], [0.0, 0.0]) == pytest.approx(-8.0)
    phis = np.array([[1.0, 10.0], [2.0, -1.0], [100.0, 0.0]])
    assert p.m_step(phis).tolist() == [2.0, 0.0]


def test_laplace_median_maximises_the_m_step_objective():
    phis = np.array([[0.0], [1.0], [5.0], [9.0], [100.0]])
    p = LaplacePrior(1.0)
    grid = np.linspace(-5, 105, 11001)
    vals = [sum(p.log_prob(f, [g]) for f in phis) for g in grid]
    assert grid[int(np.argmax(vals))] == pytest.approx(p.m_step(phis)[0], abs=0.01)


def test_mixture_responsibilities_by_hand_eq51():
    p = MixturePrior(1.0)
    ws = np.array([[0.0], [2.0]])
    r = p.responsibilities(np.array([[1.0], [0.0]]), ws)
    assert r[0] == pytest.approx([0.5, 0.5])  # equidistant
    # at 0: weights exp(0) and exp(-lam/2 * 4) = exp(-2)
    assert r[1] == pytest.approx([1 / (1 + np.exp(-2)), np.exp(-2) / (1 + np.exp(-2))])


def test_mixture_log_prob_is_a_mixture_density():
    p = MixturePrior(2.0)
    ws = np.array([[0.0, 0.0], [1.0, -1.0]])
    x = np.array([0.3, 0.2])
    cov = np.eye(2) / 2.0
    expected = np.log(0.5 * stats.multivariate_normal(ws[0], cov).pdf(x) + 0.5 * stats.multivariate_normal(ws[1], cov).pdf(x))
    assert p.log_prob(x, ws) == pytest.approx(expected)


def test_mixture_m_step_eq52():
    p = MixturePrior(1.0)
    ws = np.array([[0.0], [10.0]])
    phis = np.array([[-1.0], [1.0], [9.0], [13.0]])
    r = p.responsibilities(phis, ws)
    expected = (r.T @ phis) / r.sum(axis=0)[:, None]
    np.testing.assert_allclose(p.m_step(phis, ws), expected, atol=1e-15)
    # clusters this far apart are claimed fully: the M-step is the per-cluster mean
    np.testing.assert_allclose(p.m_step(phis, ws), [[0.0], [11.0]], atol=1e-12)


def test_mixture_m_step_keeps_an_unclaimed_component():
    p = MixturePrior(100.0)
    ws = np.array([[0.0], [1000.0]])
    new = p.m_step(np.array([[1.0], [-1.0]]), ws)
    assert new.tolist() == [[0.0], [1000.0]]


def test_make_prior_and_bad_input():
    assert isinstance(make_prior("laplace", 1.0), LaplacePrior)
    with pytest.raises(ValueError, match="unknown prior 'cauchy'; choose one of gaussian, laplace, mixture"):
        make_prior("cauchy", 1.0)
    with pytest.raises(ValueError, match="lam must be > 0"):
        make_prior("gaussian", 0.0)
    with pytest.raises(ValueError, match="lam must be a finite positive number"):
        GaussianPrior(float("nan"))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        GaussianPrior(1.0).m_step(np.ones((2, 2)), weights=[-1, 0])
    with pytest.raises(ValueError, match="must have 2 columns"):
        MixturePrior(1.0).m_step(np.ones((2, 2)), np.ones((2, 3)))


@pytest.mark.parametrize("prior, params", [(GaussianPrior(1.0), None), (LaplacePrior(1.0), None),
                                           (MixturePrior(1.0), np.zeros((2, 3)))])
def test_an_m_step_over_no_client_is_an_error_not_nan(prior, params):
    with pytest.raises(ValueError, match="phis needs at least 1 row .*got 0"):
        prior.m_step(np.empty((0, 3)), params)
    with pytest.raises(ValueError, match="phis holds 1 NaN"):
        prior.m_step(np.array([[0.0, np.nan, 1.0]]), params)
    assert np.asarray(prior.m_step(np.array([[1.0, 2.0, 3.0]]), params)).shape[-1] == 3  # one client is enough
