"""FedSparse on the toy world: each identity of Section 3 and Appendix G checked in closed form."""

import itertools

import numpy as np
import pytest

from emfl import linreg
from emfl import spike_slab as ss


def _normal_logpdf(x, mean, var):
    return -0.5 * np.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var)


def test_lam0_is_half_the_log_ratio_of_precisions():
    assert ss.lam0_from_precisions(1.0, np.e**2) == pytest.approx(1.0)  # Eq. 37
    assert ss.lam0_from_precisions(2.0, 2.0) == 0.0
    assert ss.lam0_from_precisions(4.0, 1.0) < 0  # a spike wider than the slab rewards gates
    with pytest.raises(ValueError, match="lam2"):
        ss.lam0_from_precisions(1.0, -1.0)


def test_kl_of_the_slab_term_matches_numerical_integration():
    """Eq. 33 against a quadrature of KL(N(w_s, eps^2) || N(w, 1/lam))."""
    w_s, w, lam, eps = 0.7, 0.2, 3.0, 0.05
    x = np.linspace(w_s - 12 * eps, w_s + 12 * eps, 200_001)
    q = np.exp(_normal_logpdf(x, w_s, eps**2))
    kl = np.trapezoid(q * (_normal_logpdf(x, w_s, eps**2) - _normal_logpdf(x, w, 1 / lam)), x)
    assert ss.gate_kl(w_s, w, 1.0, lam, 10.0, eps) == pytest.approx(kl, rel=1e-7)


def test_switching_a_gate_on_costs_lam0_plus_the_slab_pull_eq_36_37():
    w_s, w, lam, lam2 = 1.5, 1.0, 2.0, 2.0 * np.exp(6.0)  # lam0 = 3
    for eps in (1e-1, 1e-3):
        on, off = ss.gate_kl(w_s, w, 1.0, lam, lam2, eps), ss.gate_kl(w_s, w, 0.0, lam, lam2, eps)
        exact = lam / 2 * (w_s - w) ** 2 + 3.0 + eps**2 / 2 * (lam - lam2)  # Eq. 36
        assert on - off == pytest.approx(exact, abs=1e-9)
    assert on - off == pytest.approx(0.25 + 3.0, abs=1e-3)  # Eq. 37 as eps -> 0
    half = ss.gate_kl(w_s, w, 0.5, lam, lam2, 1e-3)  # and it is linear in pi
    assert half == pytest.approx((on + off) / 2)


def test_gate_cross_entropy_equals_the_sum_over_every_gate_pattern():
    pi, theta = np.array([0.2, 0.9, 0.5]), np.array([0.6, 0.3, 0.99])
    total = 0.0
    for z in itertools.product([0, 1], repeat=3):
        z = np.array(z)
        q = np.prod(np.where(z == 1, pi, 1 - pi))
        total += q * np.sum(np.where(z == 1, np.log(theta), np.log(1 - theta)))
    assert ss.gate_cross_entropy(pi, theta) == pytest.approx(total)  # Eq. 38


def test_expected_error_under_random_gates_is_exact():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(7, 4)), rng.normal(size=7)
    c = linreg.Client(X, y, 0.5)
    w_s, pi = rng.normal(size=4), np.array([0.1, 0.5, 0.8, 1.0])
    total = 0.0
    for z in itertools.product([0, 1], repeat=4):
        z = np.array(z)
        r = y - X @ (w_s * z)
        total += np.prod(np.where(z == 1, pi, 1 - pi)) * (r @ r)
    assert ss.expected_sq_error(c, w_s, pi) == pytest.approx(total)


def test_client_loss_is_linear_in_each_gate_so_hard_em_picks_binary_gates():
    rng = np.random.default_rng(1)
    c = linreg.Client(rng.normal(size=(9, 3)), rng.normal(size=9), 0.3)
    w_s, w, theta = rng.normal(size=3), rng.normal(size=3), np.array([0.4, 0.7, 0.9])
    base = np.array([0.3, 0.6, 0.2])
    values = []
    for p in (0.0, 0.5, 1.0):
        pi = base.copy()
        pi[1] = p
        values.append(ss.client_loss(c, w_s, pi, w, theta, lam=1.5, lam0=0.7))
    assert values[1] == pytest.approx((values[0] + values[2]) / 2, abs=1e-10)
    assert values[0] != pytest.approx(values[2])


def test_a_useless_parameter_is_on_exactly_when_its_gate_cost_is_negative():
    """A feature that is all zeros buys no fit: the client switches it on iff
    lam0 - logit(theta) < 0.  logit(0.99) = 4.595, so lam0 = 4 keeps it and lam0 = 5 drops it."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20, 2))
    X[:, 1] = 0.0
    c = linreg.Client(X, X[:, 0] * 2.0 + 0.1 * rng.normal(size=20), 0.01)
    theta = np.array([0.99, 0.99])
    assert ss.gate_cost(theta, 4.0)[1] == pytest.approx(4.0 - np.log(99))
    assert ss.e_step(c, np.zeros(2), theta, lam=0.0, lam0=4.0)[1].tolist() == [1.0, 1.0]
    assert ss.e_step(c, np.zeros(2), theta, lam=0.0, lam0=5.0)[1].tolist() == [1.0, 0.0]
    # with the cross-entropy scaled down as for the networks (1e-4), lam0 alone decides
    assert ss.e_step(c, np.zeros(2), theta, lam=0.0, lam0=1e-3, ce_scale=1e-4)[1].tolist() == [1.0, 0.0]


def test_fit_for_a_fixed_set_of_gates_is_the_map_on_those_features():
    rng = np.random.default_rng(3)
    c = linreg.Client(rng.normal(size=(15, 5)), rng.normal(size=15), 0.7)
    on = np.array([True, False, True, True, False])
    w = rng.normal(size=5)
    sub = linreg.Client(c.X[:, on], c.y, c.sigma2)
    w_s = ss._fit_on(c, on, w, 2.0)
    assert np.allclose(w_s[on], linreg.map_estimate(sub, w[on], 2.0))
    assert np.all(w_s[~on] == 0)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_e_step_matches_the_search_over_every_subset(seed):
    data = ss.make_sparse_linreg(S=3, theta_true=[1, 1, 0.5, 0, 0, 0], seed=seed)
    w, theta = data.w_true, np.full(6, 0.6)
    for c in data.clients:
        greedy = ss.e_step(c, w, theta, lam=1.0, lam0=2.0)
        best = ss.e_step(c, w, theta, lam=1.0, lam0=2.0, exhaustive=True)
        loss = [ss.client_loss(c, *r, w, theta, 1.0, 2.0) for r in (greedy, best)]
        assert loss[0] == pytest.approx(loss[1], abs=1e-9)


def test_pruned_gates_stay_off():
    data = ss.make_sparse_linreg(S=2, theta_true=[1, 1, 1], seed=0)
    keep = np.array([True, False, True])
    w_s, pi = ss.e_step(data.clients[0], data.w_true, np.full(3, 0.9), 0.0, 0.1, keep=keep)
    assert pi[1] == 0 and w_s[1] == 0 and pi[0] == 1


def test_m_step_by_hand_and_it_zeroes_the_server_gradient():
    w_s = np.array([[1.0, 2.0], [3.0, 4.0]])
    pi = np.array([[1.0, 0.0], [1.0, 1.0]])
    w, theta = ss.m_step(w_s, pi)
    assert w.tolist() == [2.0, 4.0] and theta.tolist() == [1.0, 0.5]  # Eq. 20
    pi = np.array([[0.3, 0.8], [0.6, 0.1]])
    w, theta = ss.m_step(w_s, pi)
    g_w, g_theta = ss.server_gradients(w_s, pi, w, theta, lam=2.0)  # Eq. 19 at Eq. 20
    assert np.allclose(g_w, 0) and np.allclose(g_theta, 0)
    assert ss.m_step(w_s, np.zeros((2, 2)), w_old=[7.0, 8.0])[0].tolist() == [7.0, 8.0]


def test_server_gradient_matches_finite_differences_of_the_summed_objective():
    """Eq. 19 is the derivative of Eq. 18 = sum_s Eq. 17 in w and theta."""
    rng = np.random.default_rng(4)
    clients = [linreg.Client(rng.normal(size=(6, 3)), rng.normal(size=6), 1.0) for _ in range(2)]
    w_s, pi = rng.normal(size=(2, 3)), rng.uniform(0.1, 0.9, size=(2, 3))
    w, theta, lam = rng.normal(size=3), np.array([0.3, 0.5, 0.8]), 1.7

    def L(w, theta):  # Eq. 18, the objective to maximise
        return -sum(ss.client_loss(c, w_s[i], pi[i], w, theta, lam, 0.4) for i, c in enumerate(clients))

    g_w, g_theta = ss.server_gradients(w_s, pi, w, theta, lam)
    h = 1e-6
    for j in range(3):
        e = np.eye(3)[j] * h
        assert (L(w + e, theta) - L(w - e, theta)) / (2 * h) == pytest.approx(g_w[j], rel=1e-6)
        assert (L(w, theta + e) - L(w, theta - e)) / (2 * h) == pytest.approx(g_theta[j], rel=1e-6)


def test_one_binary_sample_per_client_gives_unbiased_server_gradients():
    """Eq. 21-22: averaging the gradients over every pattern of z_s ~ Bern(pi_s) gives Eq. 19."""
    w_s = np.array([[1.0, -2.0], [0.5, 3.0]])
    pi = np.array([[0.2, 0.7], [0.9, 0.4]])
    w, theta = np.array([0.1, 0.3]), np.array([0.5, 0.6])
    mean_w, mean_t = np.zeros(2), np.zeros(2)
    for bits in itertools.product([0, 1], repeat=4):
        z = np.array(bits, dtype=float).reshape(2, 2)
        q = np.prod(np.where(z == 1, pi, 1 - pi))
        g_w, g_t = ss.server_gradients(w_s * z, z, w, theta, 1.0)  # only w_s * z is sent
        mean_w, mean_t = mean_w + q * g_w, mean_t + q * g_t
    exact = ss.server_gradients(w_s, pi, w, theta, 1.0)
    assert np.allclose(mean_w, exact[0]) and np.allclose(mean_t, exact[1])


def test_fedsparse_recovers_who_uses_which_feature_and_counts_what_it_sends():
    data = ss.make_sparse_linreg(S=10, seed=0)
    used = (data.phi_true != 0).mean(axis=0)
    alg = ss.fedsparse(lam=1.0, lam0=5.0)
    states = ss.run(alg, data, np.zeros(data.d), 6)
    final = states[-1]
    assert np.allclose(final.theta, used)  # theta = the share of clients using each feature
    assert final.keep.tolist() == (used > 0.1).tolist()
    # round 1 sends all 12 w_j and theta_j to 10 clients; later rounds only the survivors
    kept = [int(s.keep.sum()) for s in states[:-1]]
    assert final.values_down == sum(2 * k * 10 for k in kept)
    assert states[1].values_up <= 12 * 10


def test_without_downscaling_the_cross_entropy_a_dense_start_locks_every_gate_on():
    """lam0 = 1 < logit(0.99): keeping a gate on is cheaper than switching it off, theta -> 1."""
    data = ss.make_sparse_linreg(S=10, seed=0)
    final = ss.run(ss.fedsparse(lam=1.0, lam0=1.0), data, np.zeros(data.d), 3)[-1]
    assert final.keep.all() and np.all(final.theta == 1.0)
    scaled = ss.run(ss.fedsparse(lam=1.0, lam0=1.0, ce_scale=1e-4), data, np.zeros(data.d), 3)[-1]
    assert not scaled.keep.all()


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="lam0 must be a number >= 0"):
        ss.fedsparse(lam=1.0, lam0=-0.5)
    with pytest.raises(ValueError, match="lam must be a number >= 0"):
        ss.fedsparse(lam=-1.0, lam0=1.0)
    with pytest.raises(ValueError, match="theta_true"):
        ss.make_sparse_linreg(theta_true=[0.5, 1.5])
    with pytest.raises(ValueError, match="prune"):
        ss.fedsparse(lam=1.0, lam0=1.0, prune=1.0)


def test_trade_off_grid_and_its_panel():
    """The grid the tutorial's sliders read: lam0 = 0 keeps everything (with the cross-entropy
    scaled down), a huge lam0 prunes everything the clients can spare; the panel draws the
    selected theta as bars."""
    import matplotlib

    matplotlib.use("Agg")
    from emfl import panels

    data = ss.make_sparse_linreg(S=4, theta_true=[1, 1, 0, 0], w_true=[2.0, -2.0, 1.0, 1.0], seed=0)
    test = linreg.held_out(data, n=50, seed=1)
    grid = ss.trade_off_grid(data, test, lams=(1.0,), lam0s=(0.0, 5.0, 1e4), ce_scales=(1e-4,), rounds=3)
    assert grid["sparsity"].shape == (1, 1, 3) and grid["theta"].shape == (1, 1, 3, 4)
    assert grid["sparsity"][0, 0, 0] == 0 and grid["sparsity"][0, 0, 2] == 1
    assert grid["theta"][0, 0, 1].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert grid["comm"][0, 0, 1] < grid["comm"][0, 0, 0]
    fig, axes = panels.figure()
    panels.fedsparse_panel(axes, grid, lam0=5.0, lam=1.0, ce_scale=1e-4)
    heights = [p.get_height() for p in axes[0].patches]
    assert heights == [1.0, 1.0, 0.0, 0.0]
