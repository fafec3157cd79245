"""Closed forms of the toy world, against hand computation, brute force and finite differences."""

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from emfl import linreg
from emfl.linreg import Client, make_federated_linreg


def test_natural_parameters_by_hand(tiny):
    assert tiny.A.tolist() == [[2.0]]
    assert tiny.b.tolist() == [4.0]


def test_posterior_by_hand(tiny):
    # precision A + lam = 3, mean (b + lam w) / 3 = 4/3 at w = 0, lam = 1
    mean, cov = linreg.posterior(tiny, [0.0], 1.0)
    assert mean == pytest.approx([4 / 3])
    assert cov.tolist() == [[pytest.approx(1 / 3)]]
    # at w = 2: (4 + 2) / 3 = 2
    assert linreg.posterior(tiny, [2.0], 1.0)[0] == pytest.approx([2.0])


def test_log_marginal_by_hand(tiny):
    # y ~ N(0, I + 1 1^T): det C = 3, y^T C^{-1} y = (2*1 - 2*1*3 + 2*9) / 3 = 14/3
    expected = -0.5 * (2 * np.log(2 * np.pi) + np.log(3.0) + 14 / 3)
    assert linreg.log_marginal(tiny, [0.0], 1.0) == pytest.approx(expected, rel=1e-14)


def test_log_marginal_equals_dense_gaussian(fed):
    w = np.array([0.3, -1.0, 0.5])
    for lam in (0.1, 2.0, 50.0):
        for c in fed.clients:
            C = c.sigma2 * np.eye(c.n) + c.X @ c.X.T / lam
            dense = stats.multivariate_normal(c.X @ w, C).logpdf(c.y)
            assert linreg.log_marginal(c, w, lam) == pytest.approx(dense, rel=1e-11)


def test_log_marginal_is_the_integral_of_eq3():
    c = Client(np.array([[0.7], [-1.2], [0.4]]), np.array([0.5, -0.8, 1.1]), 0.6)
    w, lam = 0.2, 1.7

    def integrand(phi):
        like = np.prod(stats.norm(c.X[:, 0] * phi, np.sqrt(c.sigma2)).pdf(c.y))
        return like * stats.norm(w, 1 / np.sqrt(lam)).pdf(phi)

    value, _ = integrate.quad(integrand, -20, 20, epsabs=1e-14)
    assert linreg.log_marginal(c, [w], lam) == pytest.approx(np.log(value), rel=1e-9)


def test_gradient_by_hand_and_finite_differences(tiny, fed):
    # lam (m - w) = 4/3 at w = 0
    assert linreg.grad_log_marginal(tiny, [0.0], 1.0) == pytest.approx([4 / 3])
    w = np.array([0.3, -1.0, 0.5])
    lam, h = 0.8, 1e-5
    for c in fed.clients:
        fd = [
            (linreg.log_marginal(c, w + h * e, lam) - linreg.log_marginal(c, w - h * e, lam)) / (2 * h)
            for e in np.eye(3)
        ]
        np.testing.assert_allclose(linreg.grad_log_marginal(c, w, lam), fd, rtol=1e-7, atol=1e-8)


def test_map_is_argmax_of_eq7(fed):
    c, w, lam = fed.clients[0], np.array([1.0, 0.0, -1.0]), 0.5

    def neg(phi):
        return c.nll(phi) + 0.5 * lam * np.sum((phi - w) ** 2)

    numeric = optimize.minimize(neg, w, method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(linreg.map_estimate(c, w, lam), numeric, atol=1e-6)
    np.testing.assert_allclose(linreg.map_estimate(c, w, lam), linreg.posterior(c, w, lam)[0])


def test_ml_w_zeroes_the_gradient_of_eq4(fed):
    for lam in (0.05, 1.0, 20.0):
        w = linreg.ml_w(fed, lam)
        g = sum(linreg.grad_log_marginal(c, w, lam) for c in fed.clients)
        np.testing.assert_allclose(g, 0.0, atol=1e-9)


def test_objective_on_grid_equals_eq4(fed):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(4, 5, 3))
    grid = linreg.objective_on_grid(fed, 0.7, W)
    assert grid.shape == (4, 5)
    direct = [[linreg.objective(fed, w, 0.7) for w in row] for row in W]
    np.testing.assert_allclose(grid, direct, rtol=1e-12)


def test_ml_w_limits(fed):
    mean_local = np.mean([linreg.local_least_squares(c) for c in fed.clients], axis=0)
    np.testing.assert_allclose(linreg.ml_w(fed, 1e-9), mean_local, atol=1e-6)
    np.testing.assert_allclose(linreg.ml_w(fed, 1e9), linreg.pooled_least_squares(fed), atol=1e-6)


def test_one_local_step_by_hand(tiny):
    # phi = w - lr (A w - b) = 0 - 0.1 (0 - 4) = 0.4
    assert linreg.local_gd(tiny, [0.0], K=1, lr=0.1) == pytest.approx([0.4])
    # FedProx with lam = 1: second step from 0.4: 0.4 - 0.1 (2*0.4 - 4 + 0.4) = 0.68
    assert linreg.local_gd(tiny, [0.0], K=2, lr=0.1, lam=1.0) == pytest.approx([0.68])


def test_local_gd_matches_closed_form(fed):
    w = np.array([0.5, 0.5, -0.5])
    for c in fed.clients:
        lr = 0.5 / np.linalg.eigvalsh(c.A).max()
        for K, lam in ((1, 0.0), (7, 0.0), (25, 3.0)):
            np.testing.assert_allclose(
                linreg.local_gd(c, w, K, lr, lam), linreg.local_gd_closed_form(c, w, K, lr, lam), atol=1e-12
            )


def test_fedprox_steps_converge_to_the_map(fed):
    c, w, lam = fed.clients[1], np.zeros(3), 2.0
    lr = 0.9 / (np.linalg.eigvalsh(c.A).max() + lam)
    np.testing.assert_allclose(linreg.local_gd(c, w, 5000, lr, lam), linreg.map_estimate(c, w, lam), atol=1e-10)


def test_effective_precision_by_hand(tiny):
    # a = 2, lr = 0.1, K = 1: q = 0.8, Lambda = 2 * 0.8 / 0.2 = 8; MAP (4 + 0) / (2 + 8) = 0.4
    assert linreg.effective_precision(tiny, 1, 0.1)[0, 0] == pytest.approx(8.0)


def test_k_steps_are_the_map_under_the_effective_prior(fed):
    w = np.array([1.0, -2.0, 0.5])
    for c in fed.clients:
        lr = 0.3 / np.linalg.eigvalsh(c.A).max()
        for K in (1, 3, 10):
            Lam = linreg.effective_precision(c, K, lr)
            map_under_Lam = np.linalg.solve(c.A + Lam, c.b + Lam @ w)
            np.testing.assert_allclose(linreg.local_gd(c, w, K, lr), map_under_Lam, atol=1e-10)


def test_effective_precision_is_one_over_K_lr_for_small_steps(tiny):
    # lr a K << 1: Lambda -> 1 / (K lr) - a / 2
    lam = linreg.effective_precision(tiny, 10, 1e-5)[0, 0]
    assert lam == pytest.approx(1 / (10 * 1e-5), rel=1e-3)


def test_generator_is_seeded_and_follows_the_model():
    a = make_federated_linreg(S=5, d=2, seed=7)
    b = make_federated_linreg(S=5, d=2, seed=7)
    assert all(np.array_equal(x.X, y.X) and np.array_equal(x.y, y.y) for x, y in zip(a.clients, b.clients))
    assert not np.array_equal(make_federated_linreg(S=5, d=2, seed=8).phi_true, a.phi_true)
    big = make_federated_linreg(S=4000, d=1, lam_true=4.0, w_true=[1.5], n_range=(1, 1), seed=0)
    spread = big.phi_true[:, 0] - 1.5
    assert spread.mean() == pytest.approx(0.0, abs=0.03)
    assert spread.var() == pytest.approx(1 / 4.0, rel=0.06)  # Var = 1 / lam_true
    assert set(big.n) == {1}


def test_mse_by_hand(tiny):
    # predictions 2, 2 for y = 1, 3: squared errors 1, 1
    assert tiny.mse([2.0]) == 1.0


def test_held_out_follows_each_client():
    data = make_federated_linreg(S=3, d=2, seed=5, sigma_range=(0.1, 0.1))
    test = linreg.held_out(data, n=500, seed=9)
    assert [c.n for c in test] == [500, 500, 500]
    for c, phi in zip(test, data.phi_true):
        assert c.mse(phi) == pytest.approx(0.01, rel=0.2)  # only the noise is left
        assert linreg.local_least_squares(c) == pytest.approx(phi, abs=0.02)


def test_condition_stretches_each_client_differently():
    plain = make_federated_linreg(S=3, d=4, seed=2)
    assert np.array_equal(make_federated_linreg(S=3, d=4, seed=2, condition=1.0).clients[0].X, plain.clients[0].X)
    data = make_federated_linreg(S=3, d=4, n_range=(4000, 4000), seed=2, condition=100.0)
    covs = [c.X.T @ c.X / c.n for c in data.clients]
    for C in covs:
        eig = np.linalg.eigvalsh(C)
        assert eig[-1] / eig[0] == pytest.approx(100.0, rel=0.25)
    assert not np.allclose(covs[0], covs[1], atol=0.1)  # different directions
    with pytest.raises(ValueError, match="condition must be >= 1"):
        make_federated_linreg(condition=0.5)


def test_clusters():
    data = make_federated_linreg(S=6, d=2, lam_true=100.0, centres=[[-2, 0], [2, 0]], seed=1)
    assert data.cluster.tolist() == [0, 1, 0, 1, 0, 1]
    assert np.all(np.abs(data.phi_true[data.cluster == 0, 0] + 2) < 0.5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: linreg.posterior(c, [0.0], 0.0), "lam must be > 0"),
        (lambda c: linreg.posterior(c, [0.0], -1.0), "lam must be > 0"),
        (lambda c: linreg.log_marginal(c, [0.0, 1.0], 1.0), "w must have length 1"),
        (lambda c: linreg.map_estimate(c, [[0.0]], 1.0), "1-D vector"),
        (lambda c: linreg.local_gd(c, [0.0], 0, 0.1), "K must be >= 1"),
        (lambda c: linreg.local_gd(c, [0.0], 2.5, 0.1), "K must be a whole number"),
        (lambda c: linreg.local_gd(c, [0.0], 1, -0.1), "lr must be > 0"),
        (lambda c: linreg.local_gd(c, [0.0], 1, 0.1, lam=-1), "lam must be >= 0"),
        (lambda c: linreg.effective_precision(c, 1, 0.6), "lr=0.6 is too large"),
        (lambda c: Client(np.ones((3, 2)), np.ones(2)), "must have shape"),
        (lambda c: Client(np.ones(3), np.ones(3)), "2-D array"),
        (lambda c: Client(np.ones((3, 1)), np.ones(3), sigma2=0.0), "sigma2 must be > 0"),
        (lambda c: make_federated_linreg(S=0), "S must be >= 1"),
        (lambda c: make_federated_linreg(n_range=(5, 2)), "n_range"),
    ],
)
def test_bad_input_is_explained(tiny, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny)


def test_elbo_is_the_marginal_at_the_posterior_and_below_it_by_the_kl(fed):
    """Eq. 12 for Gaussian q: equal to log p(D_s | w) at the exact posterior, and below it by exactly
    KL(q || posterior), computed here with the textbook formula for two Gaussians."""
    c, lam = fed.clients[0], 1.3
    d = c.d
    w = np.linspace(0.5, -1.0, d)
    m, S = linreg.posterior(c, w, lam)
    assert linreg.elbo(c, m, S, w, lam) == pytest.approx(linreg.log_marginal(c, w, lam), abs=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(3):
        q_m = m + rng.normal(size=d) * 0.3
        B = rng.normal(size=(d, d))
        q_S = B @ B.T + 0.05 * np.eye(d)
        P = np.linalg.inv(S)
        kl = 0.5 * (np.trace(P @ q_S) + (m - q_m) @ P @ (m - q_m) - d + np.log(np.linalg.det(S) / np.linalg.det(q_S)))
        assert kl > 0
        assert linreg.elbo(c, q_m, q_S, w, lam) == pytest.approx(linreg.log_marginal(c, w, lam) - kl, abs=1e-9)
    with pytest.raises(ValueError, match="positive definite"):
        linreg.elbo(c, m, -S, w, lam)


def test_bad_inputs_are_refused_with_what_is_wrong(tiny):
    # a negative definite covariance has a positive determinant in even dimension: the old check
    # (the sign of det) let -I through, with an ELBO of 145.6
    two = linreg.Client(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="cov must be positive definite .*smallest eigenvalue is -1"):
        linreg.elbo(two, np.zeros(2), -np.eye(2), np.zeros(2), lam=1.0)
    with pytest.raises(ValueError, match="cov must be symmetric"):
        linreg.elbo(two, np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), lam=1.0)
    with pytest.raises(ValueError, match="cov must be a 2 x 2 matrix"):
        linreg.elbo(two, np.zeros(2), np.eye(3), np.zeros(2), lam=1.0)
    # by hand for the 1-D client: A = 2, b = 4, lam = 1: the posterior is N(5/3, 1/3), accepted
    m, cov = linreg.posterior(tiny, [1.0], 1.0)
    assert m.tolist() == pytest.approx([5 / 3]) and cov.ravel().tolist() == pytest.approx([1 / 3])
    assert linreg.elbo(tiny, m, cov, [1.0], 1.0) == pytest.approx(linreg.log_marginal(tiny, [1.0], 1.0))
    with pytest.raises(ValueError, match="w holds 1 NaN or infinite entries of 1"):
        linreg.posterior(tiny, [np.nan], 1.0)
    with pytest.raises(ValueError, match="Client.X holds 1 NaN or infinite entries of 2"):
        linreg.Client(np.array([[1.0], [np.nan]]), np.array([1.0, 3.0]))
    with pytest.raises(ValueError, match="Client.y holds 1 NaN or infinite entries"):
        linreg.Client(np.array([[1.0], [1.0]]), np.array([np.inf, 3.0]))
