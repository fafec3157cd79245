"""How much a layer knows: mutual information between a layer's representation T, the inputs X
and the labels Y (the information plane of Shwartz-Ziv and Tishby, used by Adilova et al. 2019
to compare local models before averaging with the averaged model after).

Two estimators, both in bits, both on an array ``T`` of activations (examples x units) and the
examples' labels ``y``:

* :func:`binning`: each unit's activation put in one of ``bins`` equal bins, each binned vector
  a discrete symbol.  For a deterministic network on distinct inputs ``I(X;T) = H(T)`` and
  ``I(T;Y) = H(T) - sum_y p(y) H(T | Y = y)``.  Plug-in entropies: biased upwards for few
  examples per symbol (about ``(K_T - 1)(K_Y - 1) / (2 N ln 2)`` bits for ``I(T;Y)``), and
  ``H(T)`` can never exceed ``log2 N``; both numbers depend on the bin count.
* :func:`kde`: no bins.  Gaussian noise of variance ``noise**2`` is added to ``T`` (without it a
  deterministic ``I(X;T)`` is infinite), and the entropy of the resulting mixture of Gaussians is
  bracketed by the pairwise-distance bounds of Kolchinsky and Tracey (2017): the KL form gives an
  upper bound on ``I(X;T+e)``, the Bhattacharyya form a lower bound (Saxe et al. 2018 used the
  upper one).  ``I(T+e;Y) = I(X;T+e) - sum_y p(y) I(X;T+e | Y = y)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["InfoPoint", "entropy", "symbols", "binning", "binned_pair", "kde", "miller_madow_bias"]

LN2 = np.log(2.0)


class InfoPoint(NamedTuple):
    """A point of the information plane, in bits."""

    ixt: float  # I(X;T)
    ity: float  # I(T;Y)


def _as_2d(T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.ndim == 1:
        T = T[:, None]
    if T.ndim != 2 or len(T) == 0:
        raise ValueError(f"activations must be an (examples x units) array with at least one example; got shape {T.shape}")
    if not np.isfinite(T).all():
        raise ValueError("activations contain NaN or infinity; check the model that produced them")
    return T


def _labels(y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"need one label per example: {n} examples, labels of shape {y.shape}")
    return y


def entropy(sym) -> float:
    """Plug-in entropy (bits) of discrete symbols: one per row of ``sym`` (or per entry of a 1-D array)."""
    sym = np.asarray(sym)
    if sym.ndim == 1:
        sym = sym[:, None]
    _, counts = np.unique(sym, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def symbols(T, bins: int, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Each activation's bin among ``bins`` equal bins over ``[lo, hi]`` (default: the range of
    ``T``); values outside go to the end bins."""
    T = _as_2d(T)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1; got {bins!r}")
    lo = float(T.min()) if lo is None else float(lo)
    hi = float(T.max()) if hi is None else float(hi)
    if not hi >= lo:
        raise ValueError(f"the binning range needs lo <= hi; got lo = {lo}, hi = {hi}")
    edges = np.linspace(lo, hi, bins + 1)[1:-1]
    return np.digitize(T, edges).astype(np.int32)


def binning(T, y, bins: int = 30, lo: float | None = None, hi: float | None = None) -> InfoPoint:
    """``I(X;T) = H(T)`` and ``I(T;Y) = H(T) - sum_y p(y) H(T | Y = y)`` of the binned layer (bits)."""
    T = _as_2d(T)
    y = _labels(y, len(T))
    sym = symbols(T, bins, lo, hi)
    h = entropy(sym)
    classes, counts = np.unique(y, return_counts=True)
    h_given_y = sum(c / len(y) * entropy(sym[y == k]) for k, c in zip(classes, counts))
    return InfoPoint(float(h), float(h - h_given_y))


def binned_pair(a, b, bins: int = 30) -> float:
    """Plug-in ``I(A;B)`` (bits) of two variables, each binned over its own range: a lower bound of
    the continuous MI as the bins shrink (data processing), biased upwards by the sample size."""
    sa = symbols(a, bins)
    sb = symbols(b, bins)
    if len(sa) != len(sb):
        raise ValueError(f"need paired samples: {len(sa)} and {len(sb)}")
    return entropy(sa) + entropy(sb) - entropy(np.hstack([sa, sb]))


def miller_madow_bias(k_t: int, k_y: int, n: int) -> float:
    """The leading bias (bits) of the plug-in ``I(T;Y)`` for independent ``T`` and ``Y`` with
    ``k_t`` and ``k_y`` equally likely values and ``n`` examples: ``(k_t - 1)(k_y - 1) / (2 n ln 2)``."""
    return (k_t - 1) * (k_y - 1) / (2 * n * LN2)


def _sq_distances(T: np.ndarray) -> np.ndarray:
    sq = (T * T).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * T @ T.T
    return np.maximum(d, 0.0)


def _pairwise_bound(d2: np.ndarray, scale: float) -> float:
    """``-1/N sum_i ln(1/N sum_j exp(-d2_ij / scale))`` in nats, computed stably."""
    a = -d2 / scale
    m = a.max(1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(a - m).sum(1))) - np.log(len(d2))
    return float(-lse.mean())


def kde(T, y, noise: float, bound: str = "upper") -> InfoPoint:
    """``I(X; T+e)`` and ``I(T+e; Y)`` (bits) for Gaussian noise ``e`` of standard deviation
    ``noise``, from the pairwise-distance bounds on a mixture's entropy: ``bound="upper"`` (KL,
    ``exp(-|t_i - t_j|^2 / (2 noise^2))``) or ``"lower"`` (Bhattacharyya, ``/ (8 noise^2)``).
    ``I(T+e;Y)`` is the difference of two such bounds, so it is an estimate, not a bound."""
    T = _as_2d(T)
    y = _labels(y, len(T))
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise > 0:
        raise ValueError(f"noise must be a standard deviation > 0; got {noise!r}")
    scales = {"upper": 2.0, "lower": 8.0}
    if bound not in scales:
        raise ValueError(f"bound must be 'upper' or 'lower'; got {bound!r}")
    scale = scales[bound] * noise ** 2
    d2 = _sq_distances(T)
    ixt = _pairwise_bound(d2, scale)
    classes, counts = np.unique(y, return_counts=True)
    within = sum(c / len(y) * _pairwise_bound(d2[np.ix_(y == k, y == k)], scale) for k, c in zip(classes, counts))
    return InfoPoint(float(ixt / LN2), float((ixt - within) / LN2))
