"""Solutions to the exercises of notebook 08 (for instructors; tests/test_exercises.py checks them)."""

import numpy as np


def max_ixt(units, bins, N):  # 8.1: log2 of the number of symbols: the grid's bins^units or the N inputs
    return min(units * np.log2(bins), np.log2(N))


def entropy(counts):
    p = np.asarray(counts, dtype=float).ravel()
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def ixt(counts):  # 8.2: I(X;T) = H(T) for a deterministic layer on distinct inputs
    return entropy(np.asarray(counts).sum(axis=1))


def ity(counts):  # 8.3: I(T;Y) = H(T) - sum_y p(y) H(T | Y = y)
    counts = np.asarray(counts)
    p_y = counts.sum(axis=0) / counts.sum()
    return ixt(counts) - sum(p_y[y] * entropy(counts[:, y]) for y in range(counts.shape[1]) if p_y[y] > 0)


ANSWERS = {"8.1": max_ixt, "8.2": ixt, "8.3": ity,
           "8.4": "a",  # the data-processing inequality
           "8.5": "a"}  # ten single steps from one model average to one step on all the data
