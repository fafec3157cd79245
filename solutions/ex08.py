"""Solutions to the exercises of notebook 08 (for instructors; tests/test_exercises.py checks them).
Each function imports what it needs: nbgrader pastes its body into the notebook."""


def max_ixt(units, bins, N):  # 8.1: log2 of the number of symbols: the grid's bins^units or the N inputs
    import numpy as np

    return min(units * np.log2(bins), np.log2(N))


def ixt(counts):  # 8.2: I(X;T) = H(T) for a deterministic layer on distinct inputs
    import numpy as np

    p = np.asarray(counts, dtype=float).sum(axis=1)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def ity(counts):  # 8.3: I(T;Y) = H(T) - sum_y p(y) H(T | Y = y)
    import numpy as np

    def entropy(c):
        p = np.asarray(c, dtype=float).ravel()
        p = p[p > 0] / p.sum()
        return float(-(p * np.log2(p)).sum())

    counts = np.asarray(counts)
    p_y = counts.sum(axis=0) / counts.sum()
    return entropy(counts.sum(axis=1)) - sum(p_y[y] * entropy(counts[:, y]) for y in range(counts.shape[1]) if p_y[y] > 0)


def g_statistic(counts):  # 8.6: G = 2 sum n ln(n / e), e = n_t n_y / N the counts independence predicts
    import numpy as np

    n = np.asarray(counts, dtype=float)
    e = n.sum(axis=1, keepdims=True) * n.sum(axis=0, keepdims=True) / n.sum()
    held = n > 0
    return float(2 * (n[held] * np.log(n[held] / e[held])).sum())


def expected_entropy(K, N):  # 8.7: each symbol's count is Binomial(N, 1/K); average -(n/N) log2(n/N) over it
    import numpy as np
    from scipy import stats

    n = np.arange(1, N + 1)
    return float(-K * (stats.binom.pmf(n, N, 1 / K) * n / N * np.log2(n / N)).sum())


ANSWERS = {"8.1": max_ixt, "8.2": ixt, "8.3": ity,
           "8.4": "b",  # the data-processing inequality
           "8.5": "c",  # ten single steps from one model average to one step on all the data
           "8.6": g_statistic, "8.7": expected_entropy}
