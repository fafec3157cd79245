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


def delta_limit(samples, w):  # 3.6: rho_l Sigma^-1 -> the projector onto the null space of S
    centred = samples - samples.mean(axis=0)
    Q, sv, _ = np.linalg.svd(centred.T, full_matrices=False)  # the centred samples' span
    Q = Q[:, sv > 1e-10 * max(sv.max(), 1.0)]
    v = w - samples.mean(axis=0)
    return v - Q @ (Q.T @ v)


def fixed_point_rho0(As, mus, lr, burn_in, steps):  # 3.7: Sigma = I, the delta is w minus the iterate average
    d = len(mus[0])
    I = np.eye(d)
    Ms = []
    for A in As:
        step = I - lr * A  # x_t - mu = step^t (w - mu) with full-batch gradient steps
        power = np.linalg.matrix_power(step, burn_in)
        M = np.zeros((d, d))
        for _ in range(steps):
            power = step @ power
            M += power / steps
        Ms.append(M)  # mean of x_t over t = burn_in + 1 .. burn_in + steps: mu + M (w - mu)
    return np.linalg.solve(sum(I - M for M in Ms), sum((I - M) @ m for M, m in zip(Ms, mus)))


ANSWERS = {"3.1": global_optimum, "3.2": shrinkage_covariance, "3.3": delta_two_samples,
           "3.4": 3,  # the fewest samples with which FedPA ends within half of FedAvg's distance
           "3.5": "a", "3.6": delta_limit, "3.7": fixed_point_rho0}
