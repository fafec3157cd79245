"""Solutions to the exercises of notebook 03 (for instructors; tests/test_exercises.py checks them)."""

import numpy as np


def global_optimum(As, mus):  # 3.1: precisions add; means are precision-weighted
    return np.linalg.solve(sum(As), sum(A @ m for A, m in zip(As, mus)))


def shrinkage_covariance(samples, rho):  # 3.2
    l, d = samples.shape
    r = 1 / (1 + (l - 1) * rho)
    S = np.cov(samples, rowvar=False, ddof=1).reshape(d, d) if l > 1 else np.zeros((d, d))
    return r * np.eye(d) + (1 - r) * S


def delta_two_samples(x1, x2, w, rho):  # 3.3: Sigma = r I + c u u^T, inverted by Sherman-Morrison
    r = 1 / (1 + rho)  # rho_l for l = 2
    u = x1 - x2
    c = (1 - r) / 2  # S = u u^T / 2 (unbiased, l - 1 = 1)
    v = w - (x1 + x2) / 2
    return (v - c * u * (u @ v) / (r + c * (u @ u))) / r


ANSWERS = {"3.1": global_optimum, "3.2": shrinkage_covariance, "3.3": delta_two_samples,
           "3.4": 3,  # the fewest samples with which FedPA ends within half of FedAvg's distance
           "3.5": "a"}
