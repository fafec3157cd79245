"""Checks of the exercises of the toy-world notebooks (01-04); see :mod:`emfl.exercises`."""

from __future__ import annotations

import numpy as np

from emfl import em, linreg
from emfl._exercise_kit import as_array, as_count, as_number, as_pair, call_answer, choice, close, exercise, shape_problem

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


def _toy_client(rng, d, n, sigma2):
    """A linear-regression client with random data: its A_s a check passes, its closed forms the check's answer."""
    X = rng.normal(size=(n, d))
    return linreg.Client(X, X @ rng.normal(size=d) + np.sqrt(sigma2) * rng.normal(size=n), sigma2)


def _joint(client, phi, w, lam):
    """Eq. 9 for one client: log p(D_s | phi) + log p(phi | w)."""
    from emfl.priors import GaussianPrior

    return -client.nll(phi) + GaussianPrior(lam).log_prob(phi, w)


def _diagnose(gots, cases, rights, mistakes, generic):
    """(ok, message) for a function answer checked on ``cases``: right if ``gots`` match ``rights`` on
    every case, else the hint of the first mistake ``wrong(*case)`` that matches on every case, else
    ``generic``: a mistake is named only when it explains every answer."""
    if all(close(g, r) for g, r in zip(gots, rights)):
        return True, None
    for wrong, hint in mistakes:
        if all(close(g, wrong(*c)) for g, c in zip(gots, cases)):
            return False, hint
    return False, generic


def _numbers(fn, cases, what):
    """Call ``fn`` on every case; (values, None), or (None, a hint) when one is not a single number."""
    gots = []
    for case in cases:
        got = call_answer(fn, *case)
        if as_number(got) is None:
            return None, (f"return one number ({what}); got {type(got).__name__} of shape {np.shape(got)}.")
        gots.append(got)
    return gots, None


def _logdet(M):
    return float(np.linalg.slogdet(M)[1])


@exercise("1.7", "hard-EM's objective is no bound on the marginal likelihood")
def _hard_em_gap(hard_em_gap):
    # clients of the check's own: (client, w, lam); the answer is computed from their data, Eq. 9 minus Eq. 4's term
    rng = np.random.default_rng(17)
    X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, -1.0]])
    clients = [(linreg.Client(X, np.array([1.0, -1.0, 0.5, 2.0]), 0.25), np.array([0.3, -0.2]), 0.5),
               (_toy_client(rng, 3, 4, 4.0), rng.normal(size=3), 0.2),  # little data: the gap is negative
               (_toy_client(rng, 1, 50, 0.1), rng.normal(size=1), 3.0)]
    rights = [_joint(c, linreg.map_estimate(c, w, lam), w, lam) - linreg.log_marginal(c, w, lam)
              for c, w, lam in clients]
    cases = [(c.A, lam) for c, _, lam in clients]
    gots, problem = _numbers(hard_em_gap, [(A.copy(), lam) for A, lam in cases], "the gap for this client")
    if problem:
        return False, problem

    def P(A, lam):
        return A + lam * np.eye(len(A))

    def c2pi(A):
        return len(A) / 2 * np.log(2 * np.pi)

    mistakes = [
        (lambda A, lam: 0.5 * _logdet(P(A, lam)), "the posterior's density has a normalising constant with 2 pi "
                                                  "in it: keep it."),
        (lambda A, lam: 0.5 * _logdet(A) - c2pi(A), "the posterior's precision is A_s + lam I, not A_s: the prior "
                                                     "narrows it too."),
        (lambda A, lam: -0.5 * _logdet(P(A, lam)) + c2pi(A), "the sign is flipped: which is larger, the joint density at "
                                                              "phi_s* or the marginal likelihood, when the posterior is narrow?"),
        (lambda A, lam: -0.5 * _logdet(P(A, lam)) - c2pi(A), "you used the log-determinant of the covariance where the "
                                                              "precision's belongs (or the other way): a narrow posterior "
                                                              "has a high density at its mode."),
        (lambda A, lam: _logdet(P(A, lam)) - 2 * c2pi(A), "check the factor in front of the log-determinant and of log 2 pi."),
    ]
    generic = ("Bayes' rule splits log p(D_s, phi | w) into log p(D_s | w) plus one more term: evaluate that term "
               "at phi = phi_s*, where the posterior N(m_s, (A_s + lam I)^-1) has its mode.")
    ok, hint = _diagnose(gots, cases, rights, mistakes, generic)
    if not ok:
        return False, hint
    return True, ("right: it depends on the posterior's precision only, is positive once the posterior is narrow "
                  "enough, and grows without bound as lam grows while log p(D_s | w) does not: Eq. 9 bounds nothing.")


@exercise("1.8", "the ELBO of a narrowing Gaussian")
def _narrow_elbo(narrow_elbo_gap):
    # q_s = N(phi, eps^2 I) around a point phi that is not the MAP: the answer is linreg.elbo minus Eq. 9
    rng = np.random.default_rng(18)
    X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, -1.0]])
    clients = [(linreg.Client(X, np.array([1.0, -1.0, 0.5, 2.0]), 0.25), np.array([0.3, -0.2]), 0.5, 0.3),
               (_toy_client(rng, 3, 6, 1.0), rng.normal(size=3), 2.0, 0.05),
               (_toy_client(rng, 1, 20, 0.5), rng.normal(size=1), 0.7, 2.0)]
    rights = []
    for c, w, lam, eps in clients:
        phi = w + rng.normal(size=len(w))  # any point: the gap does not depend on it
        rights.append(linreg.elbo(c, phi, eps**2 * np.eye(len(w)), w, lam) - _joint(c, phi, w, lam))
    cases = [(c.A, lam, eps) for c, _, lam, eps in clients]
    gots, problem = _numbers(narrow_elbo_gap, [(A.copy(), lam, eps) for A, lam, eps in cases], "the gap for this q_s")
    if problem:
        return False, problem

    def tr(A, lam):
        return float(np.trace(A)) + len(A) * lam

    def H(A, eps):  # the entropy of N(phi, eps^2 I)
        return len(A) / 2 * np.log(2 * np.pi * np.e * eps**2)

    mistakes = [
        (lambda A, lam, eps: H(A, eps), "you left out what the spread of q_s costs: Eq. 9's term is a concave "
                                        "quadratic in phi, and its average over q_s is below its value at phi_s."),
        (lambda A, lam, eps: -eps**2 / 2 * float(np.trace(A)) + H(A, eps),
         "the prior log p(phi | w) is a quadratic in phi too: its curvature counts as well as the data's."),
        (lambda A, lam, eps: -eps**2 / 2 * tr(A, lam) + len(A) / 2 * np.log(2 * np.pi * eps**2),
         "that entropy is -log q_s at its peak; the entropy averages -log q_s over q_s."),
        (lambda A, lam, eps: -eps**2 / 2 * tr(A, lam) + len(A) / 2 * np.log(2 * np.pi * np.e * eps),
         "eps is q_s's standard deviation, eps^2 its variance: check the entropy."),
        (lambda A, lam, eps: -eps / 2 * tr(A, lam) + H(A, eps),
         "eps is q_s's standard deviation, eps^2 its variance: check the power of eps in what the spread costs."),
    ]
    generic = ("average log p(D_s | phi) + log p(phi | w), a quadratic in phi with Hessian -(A_s + lam I), over "
               "q_s = N(phi_s, eps^2 I), subtract its value at phi_s, then add the entropy of q_s.")
    ok, hint = _diagnose(gots, cases, rights, mistakes, generic)
    if not ok:
        return False, hint
    return True, ("right: the same for every phi_s and w, so maximising the ELBO of q_s over phi_s and w is "
                  "hard-EM; but it goes to -infinity as eps -> 0: the bound of a point is -infinity, not Eq. 9.")


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


@exercise("2.6", "learn lambda too: the Laplace prior's M-step for (w, lam)")
def _laplace_lam(m_step):
    rng = np.random.default_rng(26)
    # an odd number of clients, then an even one with heavy tails: there any w between the two middle values is right
    cases = [np.array([[1.0, 5.0], [2.0, -1.0], [10.0, 0.0]]), 2 * rng.normal(size=(9, 3)), rng.standard_cauchy(size=(6, 2))]
    for phis in cases:
        got = as_pair(call_answer(m_step, phis.copy()))
        if got is None:
            return False, "return a pair (w, lam): the server's w, shape (d,), and the prior's lam, one number."
        w, lam = got
        problem = shape_problem(w, phis.shape[1:], "w")
        if problem:
            return False, problem
        if as_number(lam) is None:
            return False, ("lam should be one number: Eq. 42 has one lam, shared by every coordinate of every "
                           f"client; yours has shape {np.shape(lam)}.")
        S, d = phis.shape
        ordered = np.sort(phis, axis=0)
        if not close(w, np.clip(as_array(w), ordered[(S - 1) // 2], ordered[S // 2])):
            if close(w, phis.mean(axis=0)):
                return False, ("your w is the mean. Whatever lam is, the w that maximises the Laplace log-density "
                               "is the M-step of exercise 2.1.")
            return False, "w is off: whatever lam is, the w that maximises the Laplace log-density is the one of exercise 2.1."
        w = np.median(phis, axis=0)  # every w between the middle values has the same sum of distances
        dev = np.abs(phis - w).sum()
        if close(lam, S * d / dev):
            continue
        if close(lam, dev / (S * d)):
            return False, "that is the mean distance |phi_sj - w_j|, the prior's scale 1/lam: return the rate lam."
        if close(lam, S / dev):
            return False, ("you counted one factor lam/2 per client; Eq. 42 has one per coordinate of each client.")
        if close(lam, S * d / ((phis - w) ** 2).sum()):
            return False, "squared distances belong to the Gaussian prior: the Laplace log-density has |phi_sj - w_j|."
        if close(lam, S * d / np.abs(phis - phis.mean(axis=0)).sum()):
            return False, "measure the distances from the w you return (the median), not from the mean."
        return False, ("differentiate sum_s log p(phi_s | w, lam), with Eq. 42's density, in lam and set the "
                       "derivative to zero.")
    return True, ("right: the Laplace prior's lam is learned from the mean absolute distance to the median, "
                  "as the Gaussian's from the mean squared distance to the mean.")


@exercise("2.7", "the client's Laplace E-step in one dimension: soft-thresholding")
def _soft_threshold(e_step):
    from types import SimpleNamespace

    rng = np.random.default_rng(27)
    # (a, b, w, lam): pulled up; pulled down across w's side; held exactly at w; far below; then random
    cases = [(2.0, 7.0, 1.0, 1.0), (3.0, 2.0, 1.0, 0.6), (4.0, 3.0, 0.5, 2.5), (0.5, -3.0, 0.4, 0.8)]
    cases += [(float(rng.uniform(0.2, 5)), float(3 * rng.normal()), float(rng.normal()), float(rng.uniform(0.1, 3)))
              for _ in range(3)]
    gots, problem = _numbers(e_step, cases, "phi_s*")
    if problem:
        return False, problem
    # the library's lasso solver (coordinate descent, section 1) on a client with one parameter
    rights = [float(em.laplace_map(SimpleNamespace(d=1, A=np.array([[a]]), b=np.array([b])), np.array([w]), lam)[0])
              for a, b, w, lam in cases]

    def soft(x, t):
        return float(np.sign(x) * max(abs(x) - t, 0.0))

    mistakes = [
        (lambda a, b, w, lam: w + soft(b / a - w, lam),
         "your threshold is lam itself: lam is a slope, the prior's pull; the data pull with slope b - a phi."),
        (lambda a, b, w, lam: (b + lam * w) / (a + lam),
         "that is the Gaussian prior's E-step (exercise 1.2 in one dimension); the Laplace prior adds lam |phi - w|."),
        (lambda a, b, w, lam: b / a if abs(b / a - w) > lam / a else w,
         "a hard threshold: once phi* leaves w the prior still pulls it back with slope lam, so phi* stops short "
         "of the client's own fit."),
        (lambda a, b, w, lam: soft(b / a, lam / a), "you shrank the client's own fit towards 0: the prior is centred at w."),
        (lambda a, b, w, lam: b / a, "that is the client's own fit b/a, which ignores the prior."),
        (lambda a, b, w, lam: w, "phi* stays exactly at w only while the data pull weakly; for most of the check's "
                                 "clients they pull harder."),
    ]
    generic = ("maximise -a/2 phi^2 + b phi - lam |phi - w|: on each side of w it is a parabola. Where is its "
               "maximum on each side, and when is the best point the kink phi = w?")
    ok, hint = _diagnose(gots, cases, rights, mistakes, generic)
    if not ok:
        return False, hint
    return True, ("right: soft-thresholding. A client leaves w only when its data pull harder than lam, and then "
                  "stops short of its own fit: why section 1 finds coordinates exactly at w.")


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
    from emfl.panels import fedpa_runs

    l_answer = as_count(answer)
    if l_answer is None or not 1 <= l_answer <= 30:
        return False, f"answer with a number of samples l between 1 and 30; you gave {answer!r}."
    key = (tuple(c.A.tobytes() + c.b.tobytes() for c in data.clients), float(lr), K, float(rho), rounds)
    if key not in _SAMPLES_CACHE:  # the runs do not depend on the answer: a second try costs nothing
        opt = linreg.pooled_least_squares(data)

        def distance(h):
            return float(np.linalg.norm(h.w[-10:].mean(axis=0) - opt))

        # what the panel draws: em.run of fedpa.fedavg_sgd and fedpa.fedpa, replayed from the clients' minibatches
        avg = distance(fedpa_runs(data, K, 1, rho, lr, rounds)[0])
        ratios = {l: distance(fedpa_runs(data, K, l, rho, lr, rounds)[1]) / avg for l in range(1, 11)}
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


def _centred_span(samples) -> np.ndarray:
    """An orthonormal basis (columns) of the span of the centred samples ``x_k - mean``."""
    U, sv, _ = np.linalg.svd((samples - samples.mean(axis=0)).T, full_matrices=False)
    return U[:, sv > 1e-10 * max(sv.max(initial=0.0), 1.0)]


@exercise("3.6", "FedPA's delta when the samples are trusted fully")
def _delta_limit(delta_limit):
    rng = np.random.default_rng(36)
    # l <= d samples: S is singular, as for a network; the last case has a single sample (S = 0)
    cases = [(rng.normal(size=(2, 3)), rng.normal(size=3)), (rng.normal(size=(3, 5)), rng.normal(size=5)),
             (rng.normal(size=(4, 4)) * 3, rng.normal(size=4)), (rng.normal(size=(1, 3)), rng.normal(size=3))]
    for samples, w in cases:
        got = call_answer(delta_limit, samples.copy(), w.copy())
        problem = shape_problem(got, w.shape, "the limit")
        if problem:
            return False, problem
        v, Q = w - samples.mean(axis=0), _centred_span(samples)
        right = v - Q @ (Q.T @ v)  # rho_l Sigma^-1 -> 1 where S is zero, -> 0 where it is not
        if close(got, right):
            continue
        if close(got, v):
            return False, ("that is w - mu, the delta at rho = 0 (Sigma = I). As rho grows, rho_l shrinks: "
                           "look at rho_l (rho_l I + (1 - rho_l) S)^-1 along each eigenvector of S.")
        if close(got, Q @ (Q.T @ v)):
            return False, ("you kept the directions the samples spread over. There S has a positive eigenvalue s: "
                           "what does rho_l / (rho_l + (1 - rho_l) s) tend to as rho_l -> 0?")
        if close(got, -right):
            return False, "the sign: the delta points from the samples' mean toward w."
        S = np.cov(samples, rowvar=False, ddof=1).reshape(len(w), len(w)) if len(samples) > 1 else 0 * np.eye(len(w))
        if close(got, np.linalg.pinv(S) @ v):
            return False, ("that inverts S where it is positive (a pseudo-inverse), the limit of Sigma^-1 on the "
                           "samples' span; but rho_l Sigma^-1 is what is asked, and it keeps a part where S is zero.")
        Qx, sx, _ = np.linalg.svd(samples.T, full_matrices=False)
        Qx = Qx[:, sx > 1e-10 * sx.max()]
        if close(got, v - Qx @ (Qx.T @ v)):
            return False, "S is built from the centred samples x_k - mean: their span is not the samples' own."
        return False, ("write Sigma = rho_l I + (1 - rho_l) S in the eigenvectors of S, and take rho_l -> 0 in "
                       "rho_l Sigma^-1 (w - mu), one eigenvalue at a time.")
    return True, ("right: trusted fully, l <= d samples claim an infinite precision along every direction they "
                  "never explored, and the whole (rescaled) update goes there: the reason FedPA shrinks towards I.")


def _window_matrix(A, lr, burn_in, steps):
    """(1/steps) sum_{t=burn_in+1}^{burn_in+steps} (I - lr A)^t, by A's eigenvalues (a geometric sum each)."""
    a, U = np.linalg.eigh(A)
    q = 1 - lr * a
    m = q ** (burn_in + 1) * (1 - q**steps) / ((1 - q) * steps)
    return (U * m) @ U.T


@exercise("3.7", "where FedPA at rho = 0 converges")
def _fixed_point_rho0(fixed_point):
    rng = np.random.default_rng(37)
    cases = [([np.array([[3.0, 1.0], [1.0, 0.5]]), np.array([[0.4, -0.3], [-0.3, 2.0]])],
              [np.array([1.0, 2.0]), np.array([-2.0, 0.5])], 0.2, 4, 6)]
    for S, d, burn_in, steps in ((3, 2, 10, 5), (4, 3, 2, 30)):
        As = [_spd(rng, d) / d for _ in range(S)]
        lr = 0.5 / max(np.linalg.eigvalsh(A).max() for A in As)
        cases.append((As, [rng.normal(size=d) for _ in range(S)], lr, burn_in, steps))
    for As, mus, lr, burn_in, steps in cases:
        got = call_answer(fixed_point, [A.copy() for A in As], [m.copy() for m in mus], lr, burn_in, steps)
        problem = shape_problem(got, mus[0].shape, "w")
        if problem:
            return False, problem

        def fixed(Ms):  # sum_i (I - M_i)(w - mu_i) = 0
            I = np.eye(len(mus[0]))
            return np.linalg.solve(sum(I - M for M in Ms), sum((I - M) @ m for M, m in zip(Ms, mus)))

        if close(got, fixed([_window_matrix(A, lr, burn_in, steps) for A in As])):
            continue
        K = burn_in + steps
        if close(got, fixed([np.linalg.matrix_power(np.eye(len(A)) - lr * A, K) for A in As])):
            return False, (f"that is FedAvg's fixed point after {K} steps (the last iterate). At rho = 0 FedPA "
                           "sends w minus the mean of its samples: an average over the iterates after the burn-in.")
        if close(got, fixed([_window_matrix(A, lr, burn_in - 1, steps) for A in As])) or \
                close(got, fixed([_window_matrix(A, lr, burn_in + 1, steps) for A in As])):
            return False, ("off by one step: after a burn-in of b steps the samples average the iterates after "
                           "steps b + 1, ..., b + steps (x_t is the iterate after t steps, x_0 = w).")
        if close(got, fixed([_window_matrix(A, lr, 0, K) for A in As])):
            return False, "the burn-in steps are not averaged: only the iterates after them make the samples."
        if close(got, np.mean(mus, axis=0)):
            return False, ("that is where FedAvg and FedPA at rho = 0 go with unlimited steps. Count the steps: "
                           "after t of them, x_t - mu_i = (I - lr A_i)^t (w - mu_i).")
        if close(got, np.linalg.solve(sum(As), sum(A @ m for A, m in zip(As, mus)))):
            return False, "that is the global optimum, FedPA's target as rho grows; at rho = 0 Sigma = I."
        return False, ("with full-batch steps x_t - mu_i = (I - lr A_i)^t (w - mu_i): average over the sampled "
                       "steps, then solve sum_i (w - mean_i(w)) = 0 for w.")
    return True, ("right: at rho = 0 FedPA is FedAvg on the iterate average, and it drifts like FedAvg: its fixed "
                  "point depends on the steps and moves away from the global optimum as they grow.")


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
    return False, f"set lambda = 1 and ce_scale = 1e-4, then move lambda0 and read the sparsity (right panel): look {side}."


@exercise("4.5", "why FedSparse can send more than FedAvg")
def _more_than_fedavg(answer):
    return choice(answer, "c", "abc",
                   {"a": "on the toy world a client's gates are binary already and it sends them once.",
                    "b": "no data ever leaves a client, in any of these algorithms."},
                   "Until it prunes, FedSparse sends a keep-probability theta_j beside every value w_j (and the "
                   "clients a bit per value). On networks one gate covers a whole filter or neuron, so the "
                   "overhead is one number per hundreds of weights.")


@exercise("4.6", "the lambda0 at which a client switches a gate off")
def _switch_off(switch_off_lam0):
    from emfl import spike_slab as ss

    rng = np.random.default_rng(46)
    # (x, y, sigma2, w, lam, theta, ce_scale): one feature, whose fit is worth a few nats or many; every
    # switch lies at a lambda0 > 0 (below 0 the gate would be off at any lambda0 the E-step accepts)
    cases = [(rng.normal(size=7), None, 0.5, 0.4, 2.0, 0.7, 1.0), (rng.normal(size=12), None, 1.5, -0.3, 0.0, 0.2, 1e-4),
             (rng.normal(size=9), None, 0.8, 1.5, 10.0, 0.35, 1.0), (rng.normal(size=20), None, 0.25, 0.0, 1.0, 0.9, 0.5)]
    cases = [(x, x * rng.uniform(0.5, 1.5) + rng.normal(size=x.size) * np.sqrt(s2), s2, w, lam, th, ce)
             for x, _, s2, w, lam, th, ce in cases]
    for x, y, sigma2, w, lam, theta, ce in cases:
        got = as_number(call_answer(switch_off_lam0, x.copy(), y.copy(), sigma2, w, lam, theta, ce))
        if got is None:
            return False, "return one number: the lambda0, in nats, above which the gate is off."
        client = linreg.Client(x[:, None], y, sigma2)

        def on(lam0):  # the client's own E-step, tried on both subsets
            return bool(ss.e_step(client, [w], [theta], lam, lam0, ce, exhaustive=True)[1][0])

        lo, hi = 0.0, 1.0
        while on(hi):
            hi *= 2
        for _ in range(80):  # bisect the switch
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if on(mid) else (lo, mid)
        if close(got, hi, rtol=1e-6, atol=1e-8):
            continue
        logit = np.log(theta / (1 - theta))
        a, b = x @ x / sigma2, x @ y / sigma2

        def fit(ws, scale=1.0):  # the data term's drop, with w_s = ws, and the slab's pull
            return scale * ((y @ y - (y - x * ws) @ (y - x * ws)) / (2 * sigma2) - lam / 2 * (ws - w) ** 2)

        ridge = (b + lam * w) / (a + lam)
        wrong = [(fit(ridge) - ce * logit, "the sign of the cross-entropy's part: a gate the server believes in "
                  "(theta near 1) is cheaper to keep, so it stays on up to a larger lambda0."),
                 (fit(ridge), "the cost of a gate is not lambda0 alone: the server's theta makes it cheaper or dearer "
                  "(the cross-entropy's part, exercise 4.2)."),
                 (fit(ridge) + logit, "the cross-entropy enters the loss multiplied by ce_scale."),
                 (fit(b / a) + ce * logit, "your w_s ignores the slab: a client that keeps the gate minimises the "
                  "data term plus lam/2 (w_s - w)^2, not the data term alone."),
                 (fit(w) + ce * logit, "a client that keeps the gate refits w_s: the fit is bought with its best w_s, "
                  "not with the server's w."),
                 (fit(ridge, 2.0) + ce * logit, "the data term is -log p(D_s | w_s): the squared error over 2 sigma2."),
                 (fit(ridge, 0.5) + ce * logit, "the data term is -log p(D_s | w_s): the squared error over 2 sigma2.")]
        for value, hint in wrong:
            if close(got, value, rtol=1e-6):
                return False, hint
        return False, ("compare the client's loss J_s with the gate on (w_s at its best) and off (w_s = 0): "
                       "the gate goes off where lambda0 makes the two equal.")
    return True, ("right: the gate stays on while the fit it buys, net of the slab's pull, pays lambda0 minus "
                  "ce_scale times the server's log-odds; that is the hard decision the E-step makes.")


@exercise("4.7", "how often the hard-concrete gate is exactly 1")
def _p_one(p_one):
    from scipy.special import expit, logit

    for pi, beta, gamma, zeta in ((0.37, 0.5, -0.2, 1.3), (0.8, 2 / 3, -0.1, 1.1), (0.05, 1.0, -0.1, 1.1),
                                  (0.6, 1e-3, -0.1, 1.1), (0.99, 2.0, -0.3, 1.05)):
        got = as_number(call_answer(p_one, pi, beta, gamma, zeta))
        if got is None:
            return False, "return one number, a probability."
        log_alpha = logit(pi) + beta * np.log(-gamma / zeta)  # P(z > 0) = pi (gates.log_alpha_for)
        c = (1 - gamma) / (zeta - gamma)  # z = 1 once the stretched s reaches 1, s >= c
        u = expit(beta * logit(c) - log_alpha)  # s >= c once the uniform noise u reaches this
        right = 1 - u
        if close(got, right, rtol=1e-6, atol=1e-12):
            continue
        if close(got, pi):
            return False, ("that is P(z > 0), which the gate was tuned to. z = 1 needs the stretched s to reach 1, "
                           "not only to pass 0: find the u for which it does.")
        if close(got, pi - right, atol=1e-12):
            return False, "that is the chance that the gate lands strictly between 0 and 1."
        if close(got, 1 - right, atol=1e-12):
            return False, "you found the chance of z < 1: the gate is 1 when s lands at or above (1 - gamma)/(zeta - gamma)."
        if close(got, 1 - expit(beta * logit(c) - logit(pi)), atol=1e-12):
            return False, ("log alpha is not logit(pi): the gate is tuned so that P(z > 0) = pi "
                           "(gates.log_alpha_for), which shifts it by beta log(-gamma / zeta).")
        if close(got, 1 - expit(logit(c) - log_alpha), atol=1e-12):
            return False, "the temperature beta divides the logit inside s: it scales the threshold on the noise."
        if got > pi:
            return False, "P(z = 1) cannot exceed P(z > 0) = pi: z = 1 is one way of being above 0."
        return False, ("z = 1 exactly when s (zeta - gamma) + gamma >= 1: solve for the uniform u, then take "
                       "its probability.")
    return True, ("right: as beta -> 0 it tends to pi (the gate turns binary), and at Louizos et al.'s beta = 2/3 "
                  "a gate that is on is exactly 1 far less often than its pi suggests, unless pi is near 1.")
