"""FedPA: the shrinkage covariance, the O(l^2 d) delta, IASG, the global optimum, the algorithm."""

import numpy as np
import pytest
import torch
from scipy import optimize

import emfl
from emfl import em, fedpa, linreg, optim


def test_shrinkage_covariance_by_hand():
    # samples (0,0), (2,0): mean (1,0); unbiased S = [[2,0],[0,0]]; l = 2, rho = 1: rho_l = 1/2
    X = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert fedpa.rho_l(2, 1.0) == 0.5
    np.testing.assert_allclose(fedpa.shrinkage_covariance(X, 1.0), [[1.5, 0.0], [0.0, 0.5]])
    # theta - mean = (3, 1) -> Sigma^{-1} (3, 1) = (2, 2)
    np.testing.assert_allclose(fedpa.delta_exact(X, np.array([4.0, 1.0]), 1.0), [2.0, 2.0])
    np.testing.assert_allclose(fedpa.delta_dp(X, np.array([4.0, 1.0]), 1.0), [2.0, 2.0])


@pytest.mark.parametrize("d", [1, 3, 40])
@pytest.mark.parametrize("l", [1, 2, 3, 5, 10, 20])
@pytest.mark.parametrize("rho", [0.0, 0.01, 0.5, 1.0, 10.0])
def test_dp_delta_equals_the_direct_solve(d, l, rho):
    rng = np.random.default_rng(1000 * d + 10 * l + int(100 * rho))
    X = rng.normal(size=(l, d)) * rng.uniform(0.1, 3.0, size=d)
    theta = rng.normal(size=d)
    np.testing.assert_allclose(fedpa.delta_dp(X, theta, rho), fedpa.delta_exact(X, theta, rho), rtol=1e-10, atol=1e-10)


def test_rho_zero_and_one_sample_are_fedavg():
    rng = np.random.default_rng(0)
    X, theta = rng.normal(size=(6, 5)), rng.normal(size=5)
    np.testing.assert_allclose(fedpa.delta_dp(X, theta, 0.0), theta - X.mean(axis=0), atol=1e-14)
    np.testing.assert_allclose(fedpa.delta_dp(X[:1], theta, 0.7), theta - X[0], atol=1e-14)


def test_dp_delta_on_torch_tensors():
    rng = np.random.default_rng(2)
    X, theta = rng.normal(size=(7, 50)), rng.normal(size=50)
    out = fedpa.delta_dp(torch.from_numpy(X), torch.from_numpy(theta), 0.3)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), fedpa.delta_exact(X, theta, 0.3), rtol=1e-10, atol=1e-12)
    out32 = fedpa.delta_dp(torch.from_numpy(X).float(), torch.from_numpy(theta).float(), 0.3)
    np.testing.assert_allclose(out32.numpy(), fedpa.delta_exact(X, theta, 0.3), rtol=1e-3, atol=1e-4)


def test_delta_input_errors():
    with pytest.raises(ValueError, match="rho must be >= 0"):
        fedpa.delta_dp(np.ones((2, 3)), np.ones(3), -0.1)
    with pytest.raises(ValueError, match="theta has shape"):
        fedpa.delta_dp(np.ones((2, 3)), np.ones(4), 0.1)
    with pytest.raises(ValueError, match="at least one posterior sample"):
        fedpa.delta_dp(np.ones((0, 3)), np.ones(3), 0.1)


def test_iasg_by_hand():
    # grad(x) = x, lr 0.5: iterates halve. x0 = 8, burn-in 1 -> 4; samples avg(2, 1), avg(0.5, 0.25)
    samples, last = fedpa.iasg(lambda x: x, np.array([8.0]), 0.5, burn_in=1, num_samples=2, steps_per_sample=2)
    np.testing.assert_allclose(samples[:, 0], [1.5, 0.375])
    assert last.tolist() == [0.25]
    delta = fedpa.client_update(lambda x: x, np.array([8.0]), 0.5, 1, 2, 2, rho=1.0, mode="fedavg")
    assert delta.tolist() == [7.75]
    with pytest.raises(ValueError, match="mode must be"):
        fedpa.client_update(lambda x: x, np.array([8.0]), 0.5, 1, 2, 2, rho=1.0, mode="sgd")
    with pytest.raises(ValueError, match="burn_in must be"):
        fedpa.iasg(lambda x: x, np.array([8.0]), 0.5, burn_in=-1, num_samples=2, steps_per_sample=2)


def test_iasg_samples_have_the_posterior_shape():
    # least squares, minibatch B, windows of W steps: sample covariance ~ n / (B W) * A^{-1}
    c = linreg.anisotropic_client([1.0, -1.0], [1.5, 0.5], 0.3, 100, 1.0, seed=0)
    B, W = 5, 200
    grad = linreg.minibatch_grad(c, B, np.random.default_rng(0))
    lr = 0.2 / np.linalg.eigvalsh(c.A).max()
    samples, _ = fedpa.iasg(grad, linreg.local_least_squares(c), lr, 500, 300, W)
    S = np.cov(samples.T)
    ratio = np.linalg.eigvalsh(np.linalg.solve(c.n / (B * W) * np.linalg.inv(c.A), S))
    assert np.all((ratio > 0.7) & (ratio < 1.5)), ratio
    eig = np.linalg.eigvalsh(S)
    assert eig[1] / eig[0] > 4  # the samples see the anisotropy (A's eigenvalues differ ~10x)
    np.testing.assert_allclose(samples.mean(axis=0), linreg.local_least_squares(c), atol=0.02)


def test_minibatch_gradient_is_unbiased():
    # averaging the single-example gradients over every example gives the full gradient exactly
    class EveryExample:
        i = -1

        def integers(self, lo, hi, size):
            self.i += 1
            return np.array([self.i % hi])

    c = linreg.anisotropic_client([1.0, 2.0], [1.0, 1.0], 0.0, 30, 1.0, seed=3)
    grad = linreg.minibatch_grad(c, 1, EveryExample())
    phi = np.array([0.5, -0.5])
    np.testing.assert_allclose(np.mean([grad(phi) for _ in range(c.n)], axis=0), c.grad_nll(phi), rtol=1e-12)
    # by hand: one example x = (1, 2), y = 3, sigma2 = 1, n = 1: x (x . phi - y) = (1, 2) * (-3.5)
    one = linreg.Client(np.array([[1.0, 2.0]]), np.array([3.0]), 1.0)
    g = linreg.minibatch_grad(one, 1, np.random.default_rng(0))(phi)
    assert g.tolist() == [-3.5, -7.0]


def test_global_optimum_of_quadratics():
    rng = np.random.default_rng(4)
    As = [(lambda M: M @ M.T + np.eye(3))(rng.normal(size=(3, 3))) for _ in range(4)]
    mus = [rng.normal(size=3) for _ in range(4)]
    q = np.array([0.1, 0.2, 0.3, 0.4])
    total = lambda x: sum(qi * 0.5 * (x - m) @ A @ (x - m) for qi, A, m in zip(q, As, mus))
    numeric = optimize.minimize(total, np.zeros(3), tol=1e-12).x
    np.testing.assert_allclose(fedpa.global_optimum(As, mus, q), numeric, atol=1e-6)
    # 1-D by hand: A = 1 and 3 at 0 and 4 -> (0 + 12) / 4 = 3
    assert fedpa.global_optimum([[[1.0]], [[3.0]]], [[0.0], [4.0]])[0] == pytest.approx(3.0)


def test_global_optimum_of_least_squares_is_pooled_least_squares(fed):
    As = [c.A for c in fed.clients]
    mus = [linreg.local_least_squares(c) for c in fed.clients]
    np.testing.assert_allclose(fedpa.global_optimum(As, mus), linreg.pooled_least_squares(fed), atol=1e-12)


def test_bias_variance_by_hand():
    bias, var, c = fedpa.update_bias_variance([[1.0, 0.0], [3.0, 0.0]], [4.0, 0.0])
    assert (bias, var, c) == (0.0, 0.25, 2.0)  # mean (2, 0) rescaled by 2; spread 1 -> 4 / 16
    bias, var, c = fedpa.update_bias_variance([[1.0, 0.0], [3.0, 0.0]], [0.0, 4.0])
    assert (bias, var, c) == (1.0, 0.0, 0.0)  # orthogonal: nothing to rescale
    with pytest.raises(ValueError, match="ideal update is zero"):
        fedpa.update_bias_variance([[1.0, 0.0]], [0.0, 0.0])


def two_clients():
    c1 = linreg.anisotropic_client([2.0, 0.0], [1.5, 0.5], 0.0, 50, 2.0, seed=1)
    c2 = linreg.anisotropic_client([-1.0, 2.0], [1.5, 0.5], np.pi / 2.5, 50, 2.0, seed=2)
    data = emfl.FederatedLinReg((c1, c2))
    lr = 0.5 / max(np.linalg.eigvalsh(c.A).max() for c in data.clients)
    return data, lr


def test_fedpa_lands_closer_to_the_global_optimum_than_fedavg():
    data, lr = two_clients()
    opt = linreg.pooled_least_squares(data)
    h_avg = em.run(fedpa.fedavg_sgd(lr, 450, 5, optim.adam(0.05)), data, np.zeros(2), 40)
    h_pa = em.run(fedpa.fedpa(lr, 8, 50, 50, 100.0, 5, optim.adam(0.05)), data, np.zeros(2), 40)
    d_avg = np.linalg.norm(h_avg.w[-10:].mean(axis=0) - opt)
    d_pa = np.linalg.norm(h_pa.w[-10:].mean(axis=0) - opt)
    assert d_avg > 1.0  # client drift: FedAvg settles far away
    assert d_pa < 0.5 * d_avg


def test_fedpa_burn_in_rounds_are_fedavg_and_runs_are_seeded():
    data, lr = two_clients()
    a = em.run(fedpa.fedpa(lr, 3, 10, 5, 1.0, 5, fedavg_rounds=2, seed=7), data, np.zeros(2), 2)
    b = em.run(fedpa.fedavg_sgd(lr, 35, 5, seed=7), data, np.zeros(2), 2)
    np.testing.assert_allclose(a.w, b.w)  # same gradients, FedAvg deltas
    c = em.run(fedpa.fedpa(lr, 3, 10, 5, 1.0, 5, fedavg_rounds=2, seed=7), data, np.zeros(2), 4)
    np.testing.assert_array_equal(c.w[:3], a.w)
    assert np.isnan(c.lam).all()


def test_fedpa_bad_arguments():
    with pytest.raises(ValueError, match="rho must be >= 0"):
        fedpa.fedpa(0.1, 2, 2, rho=-1.0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        fedpa.fedpa(0.1, 0, 2)
    with pytest.raises(ValueError, match="fedavg_rounds must be"):
        fedpa.fedpa(0.1, 2, 2, fedavg_rounds=-3)
    with pytest.raises(TypeError, match="ServerOptimizer"):
        fedpa.fedpa(0.1, 2, 2, server_opt="adam")


def test_server_optimisers_by_hand():
    opt = optim.sgd(0.5, momentum=0.9)
    state = opt.init(np.zeros(1))
    step, state = opt.update(np.array([2.0]), state)
    assert step.tolist() == [1.0]
    step, state = opt.update(np.array([2.0]), state)
    assert step == pytest.approx([0.5 * 3.8])  # m = 0.9 * 2 + 2
    adam = optim.adam(0.1)
    step, _ = adam.update(np.array([-5.0, 0.3]), adam.init(np.zeros(2)))
    np.testing.assert_allclose(step, [-0.1, 0.1], rtol=1e-6)  # first Adam step: lr * sign(g)
    t_step, _ = adam.update(torch.tensor([2.0]), adam.init(torch.zeros(1)))
    assert isinstance(t_step, torch.Tensor) and t_step.item() == pytest.approx(0.1, rel=1e-6)
    with pytest.raises(ValueError, match="unknown server optimiser 'rmsprop'"):
        optim.make_optimizer("rmsprop", lr=0.1)
    with pytest.raises(ValueError, match="momentum must be < 1"):
        optim.sgd(0.1, momentum=1.0)
    assert isinstance(optim.make_optimizer("adam", lr=0.01), optim.ServerOptimizer)


def test_adamax_by_hand():
    opt = optim.adamax(0.01)
    step, state = opt.update(np.array([-2.0, 0.5]), opt.init(np.zeros(2)))
    # m = 0.1 g, u = |g| (+eps), bias correction 1 / 0.1: step = lr * sign(g)
    np.testing.assert_allclose(step, [-0.01, 0.01], rtol=1e-6)
    step, _ = opt.update(np.array([1.0, 0.5]), state)
    # m = 0.9 * 0.1 g1 + 0.1 g2; u = max(0.999 |g1|, |g2|); correction 1 / (1 - 0.81)
    m = 0.09 * np.array([-2.0, 0.5]) + 0.1 * np.array([1.0, 0.5])
    u = np.maximum(0.999 * np.array([2.0, 0.5]), np.array([1.0, 0.5]))
    np.testing.assert_allclose(step, 0.01 / 0.19 * m / u, rtol=1e-6)
