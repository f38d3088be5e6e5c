"""Goodness-of-fit helper for the distribution tests (fixed seeds, so results are deterministic)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import stats


def chi2_pvalue(samples: list, probs: dict) -> float:
    """Chi-square p-value of ``samples`` against the exact distribution ``probs`` (outcome ->
    probability). Cells with small expected counts are pooled."""
    n = len(samples)
    counts = Counter(samples)
    assert set(counts) <= {k for k, p in probs.items() if p > 0}, "sampled an outcome of probability 0"
    obs, exp = [], []
    pool_o = pool_e = 0.0
    for k, p in probs.items():
        e = p * n
        if e < 5:
            pool_o += counts.get(k, 0)
            pool_e += e
        else:
            obs.append(counts.get(k, 0))
            exp.append(e)
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    obs, exp = np.asarray(obs, float), np.asarray(exp, float)
    exp *= obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)
