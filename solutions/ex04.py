"""Solutions to the exercises of notebook 04 (for instructors; tests/test_exercises.py checks them)."""

import numpy as np


def m_step(w_s, pi):  # 4.1: Eq. 20
    return (pi * w_s).sum(axis=0) / pi.sum(axis=0), pi.mean(axis=0)


def gate_cost(lam0, theta):  # 4.2: J_s(pi_j = 1) - J_s(pi_j = 0), the prior's part
    return lam0 - np.log(theta / (1 - theta))


def minus_cross_entropy(pi, theta):  # 4.3: Eq. 38
    return float(np.sum(pi * np.log(theta) + (1 - pi) * np.log(1 - theta)))


def switch_off_lam0(x, y, sigma2, w, lam, theta, ce_scale):  # 4.6: J_s(off) - min J_s(on), solved for lam0
    w_s = (x @ y / sigma2 + lam * w) / (x @ x / sigma2 + lam)  # the ridge fit towards w (Eq. 7)
    on = (y - x * w_s) @ (y - x * w_s) / (2 * sigma2) + lam / 2 * (w_s - w) ** 2
    off = y @ y / (2 * sigma2)
    return off - on + ce_scale * np.log(theta / (1 - theta))


def p_one(pi, beta, gamma, zeta):  # 4.7: P(s >= (1 - gamma)/(zeta - gamma)) with P(z > 0) = pi
    log_alpha = np.log(pi / (1 - pi)) + beta * np.log(-gamma / zeta)
    return 1 / (1 + np.exp(-(log_alpha - beta * np.log((1 - gamma) / (zeta - 1)))))


ANSWERS = {"4.1": m_step, "4.2": gate_cost, "4.3": minus_cross_entropy,
           "4.4": 20.0,  # the first lambda0 of the slider with at least half the parameters pruned
           "4.5": "c", "4.6": switch_off_lam0, "4.7": p_one}
