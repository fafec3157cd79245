"""The information-plane estimators against distributions whose mutual information is known."""

import numpy as np
import pytest

from emfl import info


def test_a_discrete_copy_of_the_labels_holds_exactly_their_entropy():
    # labels 0, 0, 1, 2: p = (1/2, 1/4, 1/4), H(Y) = 1/2 + 2 * 1/4 * 2 = 1.5 bits
    y = np.array([0, 0, 1, 2])
    T = np.eye(3)[y]  # a layer that is a one-hot copy of the label
    assert info.binning(T, y, bins=30, lo=0, hi=1) == (1.5, 1.5)
    for bound in ("upper", "lower"):  # clusters sqrt(2) apart, noise 0.05: the mixture's entropy is H(Y)
        ixt, ity = info.kde(T, y, noise=0.05, bound=bound)
        assert ixt == pytest.approx(1.5, abs=1e-12) and ity == pytest.approx(1.5, abs=1e-12)


def test_independent_by_construction_gives_zero_and_h_of_t():
    T = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # each (t, y) pair exactly twice: the empirical joint is the product
    assert info.binning(T, y, bins=2) == (1.0, 0.0)


def test_the_plug_in_bias_for_independent_samples_is_shown_and_follows_miller_madow():
    rng = np.random.default_rng(0)
    for n in (200, 800, 3200):  # T uniform on 8 values, Y on 4, independent: the true I(T;Y) is 0
        est = [info.binning(rng.integers(0, 8, n), rng.integers(0, 4, n), bins=8, lo=0, hi=7).ity for _ in range(100)]
        bias = info.miller_madow_bias(8, 4, n)  # 21 / (2 n ln 2)
        assert bias == pytest.approx(21 / (2 * n * np.log(2)))
        assert np.mean(est) == pytest.approx(bias, rel=0.2)  # positive, shrinking like 1/n


def test_h_of_t_saturates_at_log2_n_as_the_bins_get_finer():
    rng = np.random.default_rng(1)
    T = rng.standard_normal((64, 3))
    h = [info.binning(T, np.zeros(64), bins=b).ixt for b in (2, 8, 1000)]
    assert h[0] < h[1] < h[2] == pytest.approx(6.0)  # every input its own symbol: log2 64
    assert info.binning(T, np.zeros(64), bins=1000).ity == 0.0  # one class: nothing about Y


def test_binned_correlated_gaussians_approach_the_closed_form_from_below():
    rng = np.random.default_rng(2)
    a = rng.standard_normal(200_000)
    b = 0.8 * a + 0.6 * rng.standard_normal(200_000)  # correlation 0.8
    exact = -0.5 * np.log2(1 - 0.8 ** 2)  # 0.737 bits
    coarse, fine = info.binned_pair(a, b, 8), info.binned_pair(a, b, 30)
    assert coarse < fine < exact  # binning loses information (data processing) ...
    assert fine > exact - 0.03  # ... less with finer bins


def test_kde_bounds_bracket_a_gaussian_channel():
    # T ~ N(0, 1), noise e ~ N(0, 0.5^2): I(T; T + e) = 1/2 log2(1 + 1 / 0.25) = 1.161 bits
    rng = np.random.default_rng(3)
    T = rng.standard_normal(2000)
    y = rng.integers(0, 2, 2000)  # labels independent of T
    exact = 0.5 * np.log2(1 + 1 / 0.5 ** 2)
    up, low = info.kde(T, y, noise=0.5), info.kde(T, y, noise=0.5, bound="lower")
    assert low.ixt < exact < up.ixt
    assert abs(up.ity) < 0.01 and abs(low.ity) < 0.01  # independent labels: near 0


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="one label per example"):
        info.binning(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="bins must be a whole number"):
        info.binning(np.zeros((4, 2)), np.zeros(4), bins=0)
    with pytest.raises(ValueError, match="noise must be"):
        info.kde(np.zeros((4, 2)), np.zeros(4), noise=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        info.binning(np.array([[np.nan]]), np.zeros(1))
    with pytest.raises(ValueError, match="'upper' or 'lower'"):
        info.kde(np.zeros((4, 2)), np.zeros(4), noise=1.0, bound="middle")
