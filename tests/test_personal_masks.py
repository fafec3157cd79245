"""FedSpa on the toy world (emfl.personal_masks): the mask's move and the server's average by
hand, exact density through the rounds, and hard-EM FedAvg recovered by a full mask."""

import numpy as np
import pytest

from emfl import linreg
from emfl import personal_masks as pm


def test_move_mask_by_hand():
    mask = np.array([1, 1, 1, 0, 0, 0], bool)
    w_s = np.array([0.5, -0.1, 2.0, 0.0, 0.0, 0.0])
    grad = np.array([9.0, 9.0, 9.0, 0.3, -4.0, 1.0])  # active entries' gradients do not matter
    # k = 1: the smallest |w_s| (index 1) off, the largest |grad| among the inactive (index 4) on
    assert pm.move_mask(mask, w_s, grad, 1).tolist() == [1, 0, 1, 0, 1, 0]
    # k = 2: indices 1 and 0 off, 4 and 5 on
    assert pm.move_mask(mask, w_s, grad, 2).tolist() == [0, 0, 1, 0, 1, 1]
    # k is capped by what is inactive: the count of ones never changes
    assert pm.move_mask(mask, w_s, grad, 10).sum() == 3
    assert pm.move_mask(mask, w_s, grad, 0).tolist() == mask.tolist()


def test_average_held_by_hand():
    values = np.array([[2.0, 2.0, 2.0, 2.0], [4.0, 4.0, 4.0, 4.0]])
    masks = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], bool)
    assert pm.average_held(values, masks, [7.0, 7.0, 7.0, 7.0]).tolist() == [2.0, 3.0, 4.0, 7.0]


def test_every_mask_keeps_its_density_and_moves_less_as_alpha_anneals():
    data = pm.make_grouped_linreg(S=6, d=8, seed=2)
    alg = pm.fedspa(0.5, lam=1.0, prune_alpha=0.5, T_end=6)
    state = alg.init(np.zeros(8), data.S)
    moved = []
    for _ in range(8):
        old = state.masks
        state, _ = alg.apply(state, data)
        assert (state.masks.sum(axis=1) == 4).all()
        moved.append(int((state.masks != old).sum()))
    # floor(alpha_t * 4) swaps per client: 2 at round 0, 1 while alpha_t >= 1/4, then none
    assert moved[0] == 4 * data.S and moved[-1] == 0 and moved[-2] == 0  # 2 off and 2 on a client
    assert state.values_up == state.values_down == 8 * 4 * data.S  # k values a client each way


def test_a_full_mask_is_hard_em_fedavg():
    data = linreg.make_federated_linreg(S=5, d=3, lam_true=2.0, n_range=(8, 30), seed=3)
    lam = 2.0
    alg = pm.fedspa(1.0, lam=lam, prune_alpha=0.5, T_end=5)
    state = alg.init(np.zeros(3), data.S)
    w = np.zeros(3)
    for _ in range(4):
        state, _ = alg.apply(state, data)
        w = np.mean([linreg.map_estimate(c, w, lam) for c in data.clients], axis=0)  # Eq. 7 and Eq. 11
        assert np.allclose(state.w, w, atol=1e-10)
    assert state.masks.all() and state.mask_bits_up == 0  # nothing to move, nothing sent


def test_grouped_clients_use_their_groups_features():
    data = pm.make_grouped_linreg(S=4, d=6, supports=((0, 1), (3, 4, 5)), seed=0)
    assert [np.flatnonzero(p).tolist() for p in data.phi_true] == [[0, 1], [3, 4, 5], [0, 1], [3, 4, 5]]
    assert pm.support_recovery(data.phi_true != 0, data.phi_true) == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="density must be in"):
        pm.fedspa(0.0, lam=1.0)
    with pytest.raises(ValueError, match="prune_alpha must be in"):
        pm.fedspa(0.5, lam=1.0, prune_alpha=2.0)
    alg = pm.fedspa(0.5, lam=1.0)
    with pytest.raises(ValueError, match="init\\(w0, S=6\\)"):
        alg.apply(alg.init(np.zeros(8), 3), pm.make_grouped_linreg(S=6, d=8))


def test_the_server_averages_only_over_the_clients_that_hold_a_coordinate():
    data = pm.make_grouped_linreg(S=2, d=8, seed=1)
    alg = pm.fedspa(0.25, lam=1.0)  # 2 coordinates a client: at least 4 of 8 held by nobody
    state = alg.init(np.full(8, 5.0), data.S)
    held = state.masks.any(axis=0)
    new, (w_s, masks) = alg.apply(state, data)
    assert (~held).sum() >= 4 and np.all(new.w[~held] == 5.0)  # nobody held them: unchanged
    both = state.masks.all(axis=0)
    one = state.masks.sum(axis=0) == 1
    assert np.allclose(new.w[both], w_s[:, both].mean(axis=0))
    assert np.allclose(new.w[one], (w_s * state.masks)[:, one].sum(axis=0))  # the one holder's value
