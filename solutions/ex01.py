"""Solutions to the exercises of notebook 01 (for instructors; tests/test_exercises.py checks them)."""

import numpy as np


def m_step(phis):  # 1.1: the gradient of Eq. 10, lam sum_s (phi_s - w), is zero at the mean
    return np.mean(phis, axis=0)


def e_step(A, b, w, lam):  # 1.2: b - A phi - lam (phi - w) = 0
    return np.linalg.solve(A + lam * np.eye(len(w)), b + lam * w)


def hard_em_round(data, w, lam):  # 1.3: every client's E-step, then the server's M-step
    phis = np.array([e_step(c.A, c.b, w, lam) for c in data.clients])
    return m_step(phis), phis


def effective_lam(a, K, eta):  # 1.4: (1 - eta a)^K = Lambda / (a + Lambda)
    q = (1 - eta * a) ** K
    return a * q / (1 - q)


def hard_em_gap(A, lam):  # 1.7
    # Bayes: log p(D, phi | w) = log p(D | w) + log p(phi | D, w); at the mode phi = m the last term is
    # log N(m; m, (A + lam I)^-1) = 1/2 log det(A + lam I) - d/2 log 2 pi
    d = len(A)
    return 0.5 * np.linalg.slogdet(A + lam * np.eye(d))[1] - d / 2 * np.log(2 * np.pi)


def narrow_elbo_gap(A, lam, eps):  # 1.8
    # E_q of a quadratic with Hessian -(A + lam I) is its value at phi minus eps^2/2 tr(A + lam I);
    # the entropy of N(phi, eps^2 I) is d/2 log(2 pi e eps^2)
    d = len(A)
    return -eps**2 / 2 * np.trace(A + lam * np.eye(d)) + d / 2 * np.log(2 * np.pi * np.e * eps**2)


ANSWERS = {"1.1": m_step, "1.2": e_step, "1.3": hard_em_round, "1.4": effective_lam,
           "1.5": 100,  # more local steps: a closer E-step, a fixed point closer to the argmax of Eq. 4
           "1.6": "a",  # hard-EM drops the posterior spread tr Sigma_s
           "1.7": hard_em_gap, "1.8": narrow_elbo_gap}
