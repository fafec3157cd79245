"""Checks of the exercises of the toy-world notebooks (01-04); see :mod:`emfl.exercises`."""

from __future__ import annotations

import numpy as np

from emfl import em, linreg
from emfl._exercise_kit import as_count, as_number, as_pair, call_answer, choice, close, exercise, shape_problem

# --------------------------------------------------------------------------- 01 · FedAvg is hard-EM

# Small numbers a person can check: three clients in two dimensions, whose mean (4, 1), median (3, 2)
# and sum (12, 3) all differ.
_PHIS = np.array([[1.0, 2.0], [3.0, -4.0], [8.0, 5.0]])


@exercise("1.1", "the M-step of the Gaussian prior (Eq. 10-11)")
def _m_step(m_step):
    rng = np.random.default_rng(11)
    cases = [_PHIS, rng.normal(size=(8, 3)), rng.normal(size=(1, 4))]
    for phis in cases:
        got = call_answer(m_step, phis.copy())
        problem = shape_problem(got, phis.shape[1:], "w")
        if problem:
            if problem.endswith(f"yours has shape {phis.shape[:1]}."):
                problem += " Aggregate over the clients (one value per coordinate), not over the coordinates."
            return False, problem
        right = phis.mean(axis=0)
        if close(got, right):
            continue
        if close(got, phis.sum(axis=0)):
            return False, ("you added the clients' points up. Set the gradient of Eq. 10, "
                           "lam sum_s (phi_s - w), to zero and solve for w.")
        if close(got, np.median(phis, axis=0)):
            return False, ("the median is the M-step of a Laplace prior (notebook 02). For the Gaussian, set "
                           "the gradient of Eq. 10 to zero.")
        return False, "w should maximise Eq. 10, -lam/2 sum_s ||phi_s - w||^2: where is its gradient zero?"
    return True, "right: the M-step of a Gaussian prior is the clients' average, FedAvg's server (Eq. 11)."


def _spd(rng, d):
    X = rng.normal(size=(d + 3, d))
    return X.T @ X


@exercise("1.2", "the client's hard E-step for linear regression (Eq. 5 and 7)")
def _e_step(e_step):
    rng = np.random.default_rng(12)
    cases = [(np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([2.0, 1.0]), np.array([1.0, -1.0]), 0.5)]
    for d in (2, 3):
        cases.append((_spd(rng, d), rng.normal(size=d), rng.normal(size=d), float(rng.uniform(0.2, 3))))
    for A, b, w, lam in cases:
        got = call_answer(e_step, A.copy(), b.copy(), w.copy(), lam)
        problem = shape_problem(got, w.shape, "phi_s*")
        if problem:
            return False, problem
        I = np.eye(len(w))
        if close(got, np.linalg.solve(A + lam * I, b + lam * w)):
            continue
        if close(got, np.linalg.solve(A + lam * I, b)):
            return False, ("your phi_s* does not move with w: the prior N(w, I/lam) adds lam w to the "
                           "right-hand side as well as lam I to the precision.")
        if close(got, np.linalg.solve(A, b + lam * w)):
            return False, "the prior adds lam I to the client's precision A: the posterior precision is A + lam I."
        if close(got, np.linalg.solve(A, b)):
            return False, "that is the client's own least-squares fit, which ignores the prior p(phi_s | w)."
        if close(got, w):
            return False, "that is the server's w: the E-step weighs it against the client's data."
        return False, ("maximise log p(D_s | phi) + log p(phi | w), the client's data and the prior together: "
                       "where is its gradient in phi zero?")
    return True, "right: with a Gaussian prior the MAP is the posterior mean, (A + lam I)^-1 (b + lam w) (Eq. 5)."


@exercise("1.3", "one round of hard-EM, client and server")
def _round(hard_em_round):
    data = linreg.make_federated_linreg(S=5, d=3, lam_true=1.0, n_range=(4, 12), seed=13)
    w, lam = np.array([0.3, -0.2, 1.0]), 0.7
    got = as_pair(call_answer(hard_em_round, data, w.copy(), lam))
    if got is None:
        return False, "return a pair (w_new, phis): the server's new w and the clients' phi_s* stacked in rows."
    w_new, phis = got
    state, right_phis = em.hard_em(lam).apply(em.ServerState(w, lam), data)
    problem = shape_problem(phis, right_phis.shape, "phis") or shape_problem(w_new, w.shape, "w_new")
    if problem:
        return False, problem
    if not close(phis, right_phis):
        return False, "the clients' phi_s* are off: check each client's E-step (exercise 1.2) with its own A_s, b_s."
    if not close(w_new, state.w):
        return False, "the clients are right but the server's w is not: the M-step is exercise 1.1."
    return True, "right: one round of hard-EM is one round of FedAvg with exact local solves."


@exercise("1.4", "the prior that K local steps imply (section 3)")
def _effective(effective_lam):
    # 1/(K eta) is off by 5% or more on every case; float32 arithmetic by ~1e-5 at most (K = 100)
    for a, K, eta in ((0.5, 10, 0.05), (2.0, 1, 0.1), (2.0, 30, 0.1), (4.0, 3, 0.2), (1.0, 100, 0.001)):
        got = call_answer(effective_lam, a, K, eta)
        if as_number(got) is None:
            return False, ("return one number (the precision along an eigenvector with eigenvalue a); "
                           f"got {type(got).__name__} of shape {np.shape(got)}.")
        q = (1 - eta * a) ** K
        right = a * q / (1 - q)
        if close(got, right, rtol=1e-3):
            continue
        if close(got, 1 / (K * eta), rtol=1e-3):
            return False, ("1/(K eta) is the limit for K eta a << 1; here K eta a = "
                           f"{K * eta * a:g}. Match phi_K to the MAP along the eigenvector exactly.")
        return False, ("along an eigenvector, phi_K - phi_hat = (1 - eta a)^K (w - phi_hat) and the MAP is "
                       "phi_hat + Lambda / (a + Lambda) (w - phi_hat): solve for Lambda.")
    return True, "right: and it falls below 1/(K eta) as soon as K eta a is not small (the table in section 3)."


@exercise("1.5", "predict, then move the sliders: few or many local steps")
def _predict_steps(answer, data, lr, rounds=15, w0=(1.5, 1.5), lam=1.0):
    gaps = {}
    for K in (1, 100):
        h = em.run(em.fedprox(lam, K, lr), data, np.asarray(w0, dtype=float), rounds)
        F_max = linreg.objective(data, linreg.ml_w(data, lam), lam)
        gaps[K] = F_max - linreg.objective(data, h.w[-1], lam)
    right = min(gaps, key=gaps.get)
    a = as_count(answer)
    if a is None:
        return False, f"answer 1 or 100 (the K whose final gap is smaller); you gave {answer!r}."
    if a not in gaps:
        return False, f"answer 1 or 100; you gave {answer!r}."
    if a == right:
        return True, (f"right (gaps after {rounds} rounds: K = 1: {gaps[1]:.2g}, K = 100: {gaps[100]:.2g}). "
                      "With more steps each round's E-step is closer to the exact MAP, so FedProx's fixed "
                      "point is closer to the argmax of Eq. 4.")
    return False, ("move the K slider to both values and read the right panel at the last round. How close is "
                   "K steps of gradient descent to the exact E-step, for K = 1 and for K = 100?")


@exercise("1.6", "why hard-EM cannot learn lambda")
def _why_lam(answer):
    return choice(answer, "a", "abc",
                   {"b": "that term is in both updates. Compare the two formulas of section 4 term by term.",
                    "c": "S d is the numerator of both. Compare the denominators."},
                   "Hard-EM replaces the posterior by a point, so its spread tr Sigma_s is lost: the "
                   "denominator is too small, lambda too large, and it feeds on itself.")


# --------------------------------------------------------------------------- 02 · Other priors, other servers


@exercise("2.1", "the M-step of the Laplace prior (Eq. 45-46)")
def _laplace_m_step(m_step):
    rng = np.random.default_rng(21)
    cases = [np.array([[1.0, 5.0], [2.0, -1.0], [10.0, 0.0]]), rng.normal(size=(9, 3)), rng.standard_cauchy(size=(7, 2))]
    for phis in cases:
        got = call_answer(m_step, phis.copy())
        problem = shape_problem(got, phis.shape[1:], "w")
        if problem:
            return False, problem
        if close(got, np.median(phis, axis=0)):
            continue
        if close(got, phis.mean(axis=0)):
            return False, ("the mean is the Gaussian prior's M-step. Here the server maximises "
                           "-lam sum_s |phi_sj - w_j| for each j: where does its derivative (Eq. 45) change sign?")
        return False, "maximise -lam sum_s ||phi_s - w||_1 one coordinate at a time: where do as many clients lie above w_j as below?"
    return True, "right: the coordinate-wise median, which one wild client cannot drag away."


@exercise("2.2", "how many clients the median server survives")
def _breakdown(answer):
    S = 11
    k = as_count(answer)
    if k is None:
        return False, f"answer with a whole number of clients; you gave {answer!r}."
    # count it: the largest k for which k clients at +-1e12 keep the median inside the honest values
    honest_values = np.linspace(-1.0, 1.0, S)

    def survives(k):
        for sign in (1.0, -1.0):
            values = honest_values.copy()
            values[:k] = sign * 1e12
            if abs(np.median(values)) > 1.0:
                return False
        return True

    right = max(k for k in range(S + 1) if survives(k))
    if k == right:
        return True, (f"right: with {S} clients the median stays among the honest values while the corrupted "
                      "ones are fewer than half; the mean breaks with a single one.")
    if k == 1 or k == 0:
        return False, "that is the mean's limit (a single client can drag it anywhere). The median needs more."
    if k > right:
        return False, f"try it: np.median of {S} numbers with {k} of them set to 1e12. Where does it land?"
    return False, f"the median can take more than that: set {k + 1} of {S} numbers to 1e12 and look at np.median."


@exercise("2.3", "the responsibilities of the mixture prior (Eq. 51)")
def _responsibilities(resp):
    from emfl.priors import MixturePrior

    rng = np.random.default_rng(23)
    cases = [(np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 0.0], [2.0, 1.0]]), 0.3),
             (rng.normal(size=(6, 2)), rng.normal(size=(3, 2)), 0.7),
             (rng.normal(size=(4, 3)) * 30, rng.normal(size=(2, 3)) * 30, 2.0)]  # far apart: exp underflows
    for phis, ws, lam in cases:
        got = call_answer(resp, phis.copy(), ws.copy(), lam)
        problem = shape_problem(got, (len(phis), len(ws)), "r", finite=False)  # nan has its own hint below
        if problem:
            return False, problem
        right = MixturePrior(lam).responsibilities(phis, ws)
        if close(got, right, atol=1e-8):
            continue
        sq = ((phis[:, None, :] - ws[None, :, :]) ** 2).sum(-1)
        if not np.all(np.isfinite(np.asarray(got, dtype=float))):
            return False, ("far from every component exp(-lam/2 ||phi - w_k||^2) underflows to 0 and 0/0 is nan: "
                           "subtract the largest exponent of each row before exponentiating (log-sum-exp).")
        if close(got, np.exp(-lam / 2 * sq)):
            return False, "each row is a distribution over the M components: normalise it to sum to one."
        with np.errstate(over="ignore", invalid="ignore"):
            for factor, hint in ((0.5, "the precision lam belongs in the exponent, beside the 1/2."),
                                 (lam, "check the exponent's factor: the log-density of N(w_k, I/lam) has a 1/2 in it.")):
                if close(got, np.exp(-factor * sq) / np.exp(-factor * sq).sum(axis=1, keepdims=True), atol=1e-8):
                    return False, hint
        return False, "each r_sk is the posterior probability of component k for client s, given phi_s (Eq. 51)."
    return True, "right, and stable when a client is far from every component."


@exercise("2.4", "the M-step of the mixture prior (Eq. 52)")
def _mixture_m_step(m_step):
    rng = np.random.default_rng(24)
    phis = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 2.0]])
    r = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    cases = [(phis, r)]
    P = rng.normal(size=(7, 3))
    R = rng.dirichlet(np.ones(4), size=7)
    cases.append((P, R))
    for phis, r in cases:
        got = call_answer(m_step, phis.copy(), r.copy())
        problem = shape_problem(got, (r.shape[1], phis.shape[1]), "ws")
        if problem:
            return False, problem
        right = (r.T @ phis) / r.sum(axis=0)[:, None]
        if close(got, right):
            continue
        if close(got, r.T @ phis):
            return False, "each w_k is a weighted *average*: divide by the total weight sum_s r_sk."
        if close(got, np.repeat(phis.mean(axis=0)[None], r.shape[1], axis=0)):
            return False, "every component got the plain average: weight each client by its responsibility r_sk."
        return False, "w_k maximises sum_s r_sk log N(phi_s; w_k, I/lam): set its gradient to zero (Eq. 52)."
    return True, "right: EM for a Gaussian mixture, run on what the clients send."


@exercise("2.5", "predict: when does the ensemble split?")
def _predict_split(answer, data, w0, lam=0.4, rounds=30):
    if not isinstance(answer, (bool, np.bool_)):
        return False, f"answer True or False; you gave {answer!r}."
    h = em.run(em.hard_em(lam, "mixture"), data, np.asarray(w0, dtype=float), rounds)
    distance = float(np.linalg.norm(h.final[0] - h.final[1]))
    right = distance > 1.0
    if bool(answer) == right:
        return True, (f"right: at lam = {lam} the members end {distance:.2f} apart. Between lam = 0.2 and 0.4 the "
                      "soft responsibilities turn decisive and the single average splits in two, a sudden change "
                      "like a phase transition.")
    return False, (f"run the loop of the cell above with lam = {lam}. Which side of the change between "
                   "0.05 and 1.0 is it on, and why do the responsibilities decide it?")


# --------------------------------------------------------------------------- 03 · FedPA


@exercise("3.1", "the global optimum as a product of local posteriors")
def _global_optimum(global_optimum):
    rng = np.random.default_rng(31)
    cases = [([np.array([[2.0, 1.0], [1.0, 2.0]]), np.diag([1.0, 3.0])], [np.array([1.0, 0.0]), np.array([0.0, 1.0])])]
    for S, d in ((3, 2), (4, 3)):
        cases.append(([_spd(rng, d) for _ in range(S)], [rng.normal(size=d) for _ in range(S)]))
    for As, mus in cases:
        got = call_answer(global_optimum, [A.copy() for A in As], [m.copy() for m in mus])
        problem = shape_problem(got, mus[0].shape, "w*")
        if problem:
            return False, problem
        right = np.linalg.solve(sum(As), sum(A @ m for A, m in zip(As, mus)))
        if close(got, right):
            continue
        if close(got, np.mean(mus, axis=0)):
            return False, ("that is the plain average of the client optima, FedAvg's fixed point with many local "
                           "steps: it treats every Sigma_i as the identity.")
        if close(got, np.linalg.solve(sum(As), sum(mus))):
            return False, "the precisions are summed, but every mu_i still counts the same: weigh each by its own A_i."
        return False, ("multiply the clients' Gaussians N(mu_i, A_i^-1): the product is Gaussian; read its mean off "
                       "the exponent (complete the square).")
    return True, "right: precisions add, and each client's optimum counts by its precision."


@exercise("3.2", "the shrinkage covariance")
def _shrinkage(shrinkage_covariance):
    from emfl import fedpa

    rng = np.random.default_rng(32)
    cases = [(np.array([[1.0, 0.0], [-1.0, 2.0], [0.0, 1.0]]), 2.0), (rng.normal(size=(5, 3)), 10.0),
             (rng.normal(size=(2, 4)), 0.5)]
    for samples, rho in cases:
        l, d = samples.shape
        got = call_answer(shrinkage_covariance, samples.copy(), rho)
        problem = shape_problem(got, (d, d), "Sigma")
        if problem:
            return False, problem
        right = fedpa.shrinkage_covariance(samples, rho)
        if close(got, right):
            continue
        r = 1 / (1 + (l - 1) * rho)
        S0 = np.cov(samples, rowvar=False, ddof=0).reshape(d, d)
        S1 = np.cov(samples, rowvar=False, ddof=1).reshape(d, d)
        if close(got, r * np.eye(d) + (1 - r) * S0):
            return False, "use the unbiased sample covariance (divide by l - 1, not l)."
        if close(got, rho * np.eye(d) + (1 - rho) * S1):
            return False, "the weight on the identity is not rho itself: it depends on the number of samples l too."
        if close(got, (1 - r) * np.eye(d) + r * S1):
            return False, "the two weights are swapped: more samples (a larger l) should trust S more, not less."
        return False, "Sigma mixes the identity and the sample covariance S: check both weights, and S itself."
    return True, "right: rho = 0 (or l = 1) gives the identity, FedAvg; a large rho trusts the samples."


@exercise("3.3", "FedPA's delta from two samples, by hand")
def _delta_two(delta_two_samples):
    from emfl import fedpa

    rng = np.random.default_rng(33)
    cases = [(np.array([1.0, 0.0]), np.array([2.0, 2.0]), np.array([0.0, 1.0]), 2.0)]
    for d in (2, 5):
        cases.append((rng.normal(size=d), rng.normal(size=d), rng.normal(size=d), float(rng.uniform(0.5, 50))))
    for x1, x2, theta, rho in cases:
        got = call_answer(delta_two_samples, x1.copy(), x2.copy(), theta.copy(), rho)
        problem = shape_problem(got, theta.shape, "delta")
        if problem:
            return False, problem
        right = fedpa.delta_exact(np.stack([x1, x2]), theta, rho)
        if close(got, right):
            continue
        mu = (x1 + x2) / 2
        if close(got, theta - mu):
            return False, ("that is w - mu, the delta with Sigma = I (FedAvg on the sample mean): the samples' "
                           "covariance is missing.")
        if close(got, -right) or close(got, mu - theta):
            return False, "the sign: the server subtracts the delta, so it points from the samples' mean toward w."
        u, eye = x1 - x2, np.eye(len(theta))
        r = 1 / (1 + rho)
        if close(got, np.linalg.solve(r * eye + (1 - r) * np.outer(u, u) / 4, theta - mu)):
            return False, "S is the unbiased sample covariance, as in exercise 3.2: with two samples divide by l - 1."
        if close(got, np.linalg.solve(rho * eye + (1 - rho) * np.outer(u, u) / 2, theta - mu)):
            return False, "the weight on the identity is rho_l for l = 2 samples, not rho itself (exercise 3.2)."
        return False, ("with two samples S is rank one (along u = x1 - x2), so Sigma is the identity plus a rank-one "
                       "term: invert it with Sherman-Morrison, or solve the d x d system.")
    return True, "right: one rank-one correction to the identity, the smallest case of FedPA's O(l^2 d) recursion."


_SAMPLES_CACHE: dict = {}


@exercise("3.4", "predict, then move the sliders: how many samples?")
def _how_many_samples(answer, data, lr, K=300, rho=100.0, rounds=30):
    from emfl import fedpa
    from emfl.optim import adam
    from emfl.panels import fedpa_split

    l_answer = as_count(answer)
    if l_answer is None or not 1 <= l_answer <= 30:
        return False, f"answer with a number of samples l between 1 and 30; you gave {answer!r}."
    key = (tuple(c.A.tobytes() + c.b.tobytes() for c in data.clients), float(lr), K, float(rho), rounds)
    if key not in _SAMPLES_CACHE:  # the runs do not depend on the answer: a second try costs nothing
        opt = linreg.pooled_least_squares(data)

        def distance(h):
            return float(np.linalg.norm(h.w[-10:].mean(axis=0) - opt))

        avg = distance(em.run(fedpa.fedavg_sgd(lr, K, 5, adam(0.1), seed=0), data, np.zeros(2), rounds))
        ratios = {}
        for l in range(1, 11):
            burn_in, W = fedpa_split(K, l)
            ratios[l] = distance(em.run(fedpa.fedpa(lr, l, W, burn_in, rho, 5, adam(0.1), seed=0), data,
                                        np.zeros(2), rounds)) / avg
        _SAMPLES_CACHE[key] = ratios
    ratios = _SAMPLES_CACHE[key]
    right = min(l for l, r in ratios.items() if r < 0.5)
    if l_answer == right:
        return True, (f"right: with l = {right} FedPA ends {ratios[right]:.2f} of FedAvg's distance away "
                      f"(l = 1: {ratios[1]:.2f}, l = 10: {ratios[10]:.2f}). One sample is FedAvg on the iterate "
                      "average; from two on the covariance starts to bend the update toward the optimum.")
    return False, ("move the l slider (K = 300, rho = 100) and compare the two curves of the right panel over the "
                   "last rounds; count from l = 1 upward.")


@exercise("3.5", "why the two biases move apart")
def _why_bias(answer):
    return choice(answer, "a", "abc",
                   {"b": "both methods take the same SGD steps with the same learning rate.",
                    "c": "the bias is measured before any server step: the server's optimiser plays no part."},
                   "With many steps FedAvg's update tends to w - mu_i, which counts every client's optimum "
                   "with the same (identity) covariance; FedPA's tends to Sigma_i^-1 (w - mu_i), whose sum "
                   "is the gradient of the global objective.")


# --------------------------------------------------------------------------- 04 · FedSparse from the spike and slab


@exercise("4.1", "the M-step of the spike and slab (Eq. 20)")
def _sparse_m_step(m_step):
    rng = np.random.default_rng(41)
    cases = [(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.5, 0.25], [1.0, 0.75]])),
             (rng.normal(size=(5, 4)), rng.uniform(0.1, 0.9, size=(5, 4)))]
    for w_s, pi in cases:
        got = as_pair(call_answer(m_step, w_s.copy(), pi.copy()))
        if got is None:
            return False, "return a pair (w, theta), each of shape (d,)."
        w, theta = got
        problem = shape_problem(w, w_s.shape[1:], "w") or shape_problem(theta, w_s.shape[1:], "theta")
        if problem:
            return False, problem
        right_w, right_theta = (pi * w_s).sum(0) / pi.sum(0), pi.mean(0)
        if not close(w, right_w):
            if close(w, w_s.mean(0)):
                return False, ("w counts a client's value even where the client switched it off: weigh each w_s "
                               "by its pi_s (set the gradient of Eq. 19 to zero).")
            return False, "w is off: where is the gradient of Eq. 19 in w zero?"
        if not close(theta, right_theta):
            if close(theta, pi.sum(0)):
                return False, "theta is a probability: it comes out as an average, not a sum, of the pi_s."
            return False, "theta is off: where is the derivative of Eq. 19 in theta zero?"
    return True, "right: w is the pi-weighted average of the clients' values, theta the average of their pi."


@exercise("4.2", "what switching a gate on costs")
def _gate_cost(gate_cost):
    for lam0, theta in ((5.0, 0.9), (5.0, 0.5), (5.0, 0.99), (1.0, 0.1), (0.0, 0.7)):
        got = call_answer(gate_cost, lam0, theta)
        if as_number(got) is None:
            return False, "return one number, in nats."
        right = lam0 - np.log(theta / (1 - theta))
        if close(got, right):
            continue
        if close(got, lam0 + np.log(theta / (1 - theta))):
            return False, "the sign of the prior's part: a gate the server believes in (theta near 1) is cheaper to switch on."
        if close(got, lam0 - np.log(theta)):
            return False, ("switching on also gives up the (1 - pi) log(1 - theta) term of Eq. 38: compare the "
                           "loss with pi = 1 and with pi = 0.")
        return False, "compare J_s with pi_j = 1 and with pi_j = 0, all else equal: the difference in the prior's terms."
    return True, "right: lam0 minus the log-odds of the server's theta."


@exercise("4.3", "the gates' cross-entropy (Eq. 38)")
def _cross_entropy(cross_entropy):
    cases = [(np.array([0.2, 0.9, 0.5]), np.array([0.6, 0.3, 0.99])), (np.array([1.0, 0.0]), np.array([0.5, 0.5]))]
    for pi, theta in cases:
        got = call_answer(cross_entropy, pi.copy(), theta.copy())
        if as_number(got) is None:
            return False, "return one number: the sum over the gates."
        right = float(np.sum(pi * np.log(theta) + (1 - pi) * np.log(1 - theta)))
        if close(got, right):
            continue
        if close(got, -right):
            return False, "the sign: Eq. 38 is an expected log-probability, so it is negative."
        if close(got, float(np.sum(pi * np.log(theta)))):
            return False, "a gate that is off has probability 1 - theta under the prior: add its term too."
        if close(got, float(np.sum(pi * np.log(1 - theta) + (1 - pi) * np.log(theta)))):
            return False, "pi is the probability that a gate is on, and the prior gives on the probability theta: pair them."
        return False, "Eq. 38 is an expectation over the gates z ~ Bern(pi): one expected log-probability a gate, summed."
    return True, "right: and summing over all 2^3 gate patterns (section 2) gives the same number."


@exercise("4.4", "predict, then move the sliders: when is half the model gone?")
def _half_gone(answer, grid, lam=1.0, ce_scale=1e-4):
    lam0s = list(np.asarray(grid["lam0s"], dtype=float))
    value = as_number(answer)
    if value is None or value not in lam0s:
        return False, f"answer with one of the slider's lambda0 values: {', '.join(f'{v:g}' for v in lam0s)}."
    i = int(np.argmin(np.abs(np.asarray(grid["ce_scales"]) - ce_scale)))
    k = int(np.argmin(np.abs(np.asarray(grid["lams"]) - lam)))
    sparsity = np.asarray(grid["sparsity"])[i, k]
    right = next(v for v, s in zip(lam0s, sparsity) if s >= 0.5)
    if value == right:
        return True, (f"right: at lambda0 = {right:g} nats the sparsity reaches {sparsity[lam0s.index(right)]:.0%}. "
                      "Above it the features that matter but carry small weights start to go.")
    side = "lower" if value > right else "higher"
    return False, f"set lambda = 1 and 'x 1e-4', then move lambda0 and read the sparsity (right panel): look {side}."


@exercise("4.5", "why FedSparse can send more than FedAvg")
def _more_than_fedavg(answer):
    return choice(answer, "a", "abc",
                   {"b": "on the toy world a client's gates are binary already and it sends them once.",
                    "c": "no data ever leaves a client, in any of these algorithms."},
                   "Until it prunes, FedSparse sends a keep-probability theta_j beside every value w_j (and the "
                   "clients a bit per value). On networks one gate covers a whole filter or neuron, so the "
                   "overhead is one number per hundreds of weights.")
