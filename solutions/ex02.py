"""Solutions to the exercises of notebook 02 (for instructors; tests/test_exercises.py checks them)."""

import numpy as np
from scipy.special import logsumexp


def laplace_m_step(phis):  # 2.1: sum_s sign(phi_sj - w_j) = 0 at the coordinate-wise median
    return np.median(phis, axis=0)


def responsibilities(phis, ws, lam):  # 2.3: Eq. 51, stably
    logits = -lam / 2 * ((phis[:, None, :] - ws[None, :, :]) ** 2).sum(-1)
    return np.exp(logits - logsumexp(logits, axis=1, keepdims=True))


def mixture_m_step(phis, r):  # 2.4: Eq. 52
    return (r.T @ phis) / r.sum(axis=0)[:, None]


def laplace_m_step_lam(phis):  # 2.6
    # the best w is the median whatever lam is; then d/dlam [S d log(lam/2) - lam sum |phi - w|] = 0
    w = np.median(phis, axis=0)
    return w, phis.size / np.abs(phis - w).sum()


def laplace_e_step(a, b, w, lam):  # 2.7
    # on each side of w a parabola, its top at b/a -+ lam/a; the kink phi = w wins while |b - a w| <= lam
    pull = b / a - w
    return w + np.sign(pull) * max(abs(pull) - lam / a, 0.0)


ANSWERS = {"2.1": laplace_m_step,
           "2.2": 5,  # of 11: the median stays among the honest values while fewer than half are corrupted
           "2.3": responsibilities, "2.4": mixture_m_step,
           "2.5": True,  # at lam = 0.4 the two members end about 2.6 apart
           "2.6": laplace_m_step_lam, "2.7": laplace_e_step}
