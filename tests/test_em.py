"""The algorithms as EM: monotone marginal likelihood, fixed points, the gradient identity."""

import numpy as np
import pytest

from emfl import em, linreg
from emfl.linreg import Client, FederatedLinReg, make_federated_linreg


def test_hard_em_round_by_hand(tiny):
    # two 1-D clients: tiny (A=2, b=4) and a copy with y doubled (A=2, b=8); lam = 2, w = 0
    other = Client(tiny.X, 2 * tiny.y, 1.0)
    data = FederatedLinReg((tiny, other))
    state, phis = em.hard_em(2.0).apply(em.hard_em(2.0).init([0.0]), data)
    # phi_s* = b / (A + lam) = 4/4 and 8/4; server mean 1.5
    assert phis[:, 0].tolist() == [1.0, 2.0]
    assert state.w.tolist() == [1.5]
    assert state.round == 1


def test_exact_em_increases_eq4_every_round(fed):
    for algo in (em.exact_em(0.5), em.exact_em(0.5, learn_lam=True), em.exact_em(0.5, server_lr=0.4)):
        h = em.run(algo, fed, np.full(3, 4.0), 25)
        F = [linreg.objective(fed, w, lam) for w, lam in zip(h.w, h.lam)]
        assert np.all(np.diff(F) >= -1e-9), algo.name
        assert F[-1] > F[0] + 1.0


def test_hard_em_equals_exact_em_for_the_gaussian_model(fed):
    # the MAP of a Gaussian posterior is its mean, so the two coincide at fixed lam
    a = em.run(em.exact_em(1.3), fed, np.zeros(3), 10)
    b = em.run(em.hard_em(1.3), fed, np.zeros(3), 10)
    np.testing.assert_allclose(a.w, b.w, atol=1e-13)


@pytest.mark.parametrize("lam", [0.1, 1.0, 10.0])
def test_hard_em_fixed_point_is_the_ml_w(fed, lam):
    h = em.run(em.hard_em(lam), fed, np.zeros(3), 400)
    np.testing.assert_allclose(h.final, linreg.ml_w(fed, lam), atol=1e-9)


def test_single_gradient_step_m_step_is_gradient_ascent_on_eq4(fed):
    # Appendix F: w + eta * mean_s (m_s - w) = w + (eta / lam) * (1/S) dF/dw
    lam, eta, w = 0.7, 0.3, np.array([0.5, -0.2, 1.0])
    state, _ = em.exact_em(lam, server_lr=eta).apply(em.ServerState(w, lam), fed)
    grad = sum(linreg.grad_log_marginal(c, w, lam) for c in fed.clients)
    np.testing.assert_allclose(state.w, w + eta / lam * grad / fed.S, atol=1e-13)


def test_exact_em_with_learned_lam_finds_a_stationary_point_of_eq4(fed):
    h = em.run(em.exact_em(1.0, learn_lam=True), fed, np.zeros(3), 3000)
    w, lam = h.final, h.lam[-1]
    eps = 1e-6
    dF = (linreg.objective(fed, w, lam * (1 + eps)) - linreg.objective(fed, w, lam * (1 - eps))) / (2 * eps * lam)
    assert abs(dF) < 1e-4
    np.testing.assert_allclose(w, linreg.ml_w(fed, lam), atol=1e-7)


def test_hard_em_learned_lam_collapses_from_a_large_start(fed):
    # exact EM from the same start settles (about 2.4 here); hard-EM's lam runs away
    w0 = linreg.ml_w(fed, 2.0)
    assert em.run(em.exact_em(1e3, learn_lam=True), fed, w0, 3000).lam[-1] < 10
    h = em.run(em.hard_em(1e3, learn_lam=True), fed, w0, 5)
    assert np.all(np.diff(h.lam) > 0)
    assert h.lam[-1] > 1e9
    with pytest.raises(FloatingPointError, match="lam estimate diverged"):
        em.run(em.hard_em(1e3, learn_lam=True), fed, w0, 40)


def test_fedavg_fixed_point(fed):
    lr = 0.2 / max(np.linalg.eigvalsh(c.A).max() for c in fed.clients)
    for K in (1, 5, 40):
        h = em.run(em.fedavg(K, lr), fed, np.zeros(3), 3000)
        np.testing.assert_allclose(h.final, em.fedavg_fixed_point(fed, K, lr), atol=1e-8)
    # K = 1: plain gradient descent on the pooled loss, so the fixed point is pooled least squares
    np.testing.assert_allclose(em.fedavg_fixed_point(fed, 1, lr), linreg.pooled_least_squares(fed), atol=1e-10)


def test_fedavg_is_fedprox_with_lam_zero(fed):
    lr = 0.01
    a = em.fedavg(3, lr).apply(em.ServerState(np.ones(3), 0.0), fed)[0].w
    manual = np.mean([linreg.local_gd(c, np.ones(3), 3, lr) for c in fed.clients], axis=0)
    np.testing.assert_allclose(a, manual, atol=1e-14)


def test_server_lr_interpolates(fed):
    lr, w = 0.01, np.zeros(3)
    full = em.fedavg(3, lr).apply(em.ServerState(w, 0.0), fed)[0].w
    half = em.fedavg(3, lr, server_lr=0.5).apply(em.ServerState(w, 0.0), fed)[0].w
    np.testing.assert_allclose(half, 0.5 * full, atol=1e-14)


def test_laplace_map_by_hand(tiny):
    # minimise phi^2 - 4 phi + lam |phi|: lam = 1 -> 2 phi - 3 = 0 -> 1.5; lam = 5 -> stays at w = 0
    assert em.laplace_map(tiny, [0.0], 1.0) == pytest.approx([1.5])
    assert em.laplace_map(tiny, [0.0], 5.0) == pytest.approx([0.0])


def test_laplace_map_is_the_minimiser(fed):
    c, w, lam = fed.clients[2], np.array([0.2, -0.3, 0.1]), 3.0

    def f(phi):
        return c.nll(phi) + lam * np.abs(phi - w).sum()

    phi = em.laplace_map(c, w, lam)
    rng = np.random.default_rng(0)
    for _ in range(200):  # no nearby point is better
        assert f(phi + 1e-3 * rng.normal(size=3)) >= f(phi) - 1e-12
    # subgradient optimality: |grad_j| <= lam where phi_j == w_j, = lam * sign otherwise
    g = c.grad_nll(phi)
    at_w = np.isclose(phi, w, atol=1e-12)
    assert np.all(np.abs(g[at_w]) <= lam + 1e-9)
    np.testing.assert_allclose(g[~at_w], -lam * np.sign(phi - w)[~at_w], atol=1e-8)


def test_mixture_map_is_stationary(fed):
    c, lam = fed.clients[0], 2.0
    ws = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 2.0]])
    phi = em.mixture_map(c, ws, lam)
    from emfl.priors import MixturePrior

    r = MixturePrior(lam).responsibilities(phi[None], ws)[0]
    grad = -c.grad_nll(phi) + lam * (r @ ws - phi)
    np.testing.assert_allclose(grad, 0.0, atol=1e-8)


def test_median_server_resists_a_corrupted_client():
    data = make_federated_linreg(S=9, d=2, lam_true=50.0, w_true=[1.0, -1.0], n_range=(40, 60), seed=2)
    bad = data.clients[0]
    data = data.replace_client(0, Client(bad.X, bad.y + 200.0 * bad.X[:, 0], bad.sigma2))
    mean = em.run(em.hard_em(5.0, "gaussian"), data, np.zeros(2), 60).final
    median = em.run(em.hard_em(5.0, "laplace"), data, np.zeros(2), 60).final
    assert np.abs(median - [1.0, -1.0]).max() < 0.2
    assert np.abs(mean - [1.0, -1.0]).max() > 10.0


def test_mixture_server_recovers_two_clusters():
    centres = np.array([[-3.0, 0.0], [3.0, 1.0]])
    data = make_federated_linreg(S=10, d=2, lam_true=20.0, centres=centres, n_range=(30, 50), seed=4)
    h = em.run(em.hard_em(5.0, "mixture"), data, np.array([[-1.0, 0.0], [1.0, 0.0]]), 30)
    order = np.argsort(h.final[:, 0])
    np.testing.assert_allclose(h.final[order], centres, atol=0.4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: em.exact_em(0.0), "lam must be > 0"),
        (lambda: em.hard_em(-1.0), "lam must be > 0"),
        (lambda: em.hard_em(1.0, prior="student"), "unknown prior 'student'"),
        (lambda: em.hard_em(1.0, prior="laplace", learn_lam=True), "gaussian prior only"),
        (lambda: em.fedavg(0, 0.1), "K must be >= 1"),
        (lambda: em.fedavg(2, 0.0), "lr must be > 0"),
        (lambda: em.fedprox(0.0, 2, 0.1), "lam must be > 0"),
        (lambda: em.fedavg(2, 0.1, server_lr=-1), "server_lr must be > 0"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_run_arguments(fed):
    with pytest.raises(ValueError, match="w must have length 3"):
        em.run(em.fedavg(1, 0.01), fed, np.zeros(2), 1)
    with pytest.raises(ValueError, match="rounds must be a whole number"):
        em.run(em.fedavg(1, 0.01), fed, np.zeros(3), -1)
    with pytest.raises(TypeError, match="FederatedAlgorithm"):
        em.run("fedavg", fed, np.zeros(3), 1)
    with pytest.raises(ValueError, match=r"\(K, d\)"):
        em.run(em.hard_em(1.0, "mixture"), fed, np.zeros((2, 2, 3)), 1)
