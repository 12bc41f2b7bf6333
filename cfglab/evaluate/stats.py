"""Interval statistics for the evaluation's proportions (stage 6a; no torch).

Every accuracy-like number cfglab reports (generation accuracy, robustness) is a share k/n of
independent trials; `proportion` gives it with its 95% Wilson score interval (good coverage even
near 0 and 1) and the exact, conservative Clopper-Pearson interval.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Sequence

import numpy as np


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (good coverage even near 0 and 1)."""
    if n <= 0:
        return (0.0, 1.0)
    z = statistics.NormalDist().inv_cdf(0.5 + conf / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 (k = n) the bound is exactly 0 (1); rounding would leave ~1e-17 off
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


@functools.lru_cache(maxsize=8)
def _log_binom_coef(n: int) -> np.ndarray:
    """log C(n, j) for j = 0..n, (n+1,)."""
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    return log_fact[n] - log_fact - log_fact[::-1]


def _binom_log_pmf(n: int, p: float) -> np.ndarray:
    j = np.arange(n + 1)
    return _log_binom_coef(n) + j * math.log(p) + (n - j) * math.log1p(-p)


def _binom_tail(n: int, k: int, p: float, upper: bool) -> float:
    """P(X >= k) if upper else P(X <= k), X ~ Binomial(n, p)."""
    lp = _binom_log_pmf(n, p)
    part = lp[k:] if upper else lp[: k + 1]
    m = part.max()
    return float(np.exp(m) * np.exp(part - m).sum())


@functools.lru_cache(maxsize=4096)
def clopper_pearson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval: coverage >= conf for every true rate, conservative."""
    if n <= 0:
        return (0.0, 1.0)
    alpha = 1 - conf

    def solve(target: Callable[[float], float]) -> float:
        lo, hi = 0.0, 1.0  # target(p) is increasing in p; find target(p) = alpha / 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if target(mid) < alpha / 2 else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(lambda p: _binom_tail(n, k, p, upper=True))
    high = 1.0 if k == n else solve(lambda p: -_binom_tail(n, k, p, upper=False) + alpha)
    return (low, high)


def proportion(ok: Sequence[bool] | np.ndarray, conf: float = 0.95) -> dict:
    """{n, n_correct, accuracy, ci_low, ci_high (Wilson), cp_low, cp_high (Clopper-Pearson)}
    of per-trial verdicts. n = 0 gives accuracy NaN and the uninformative interval [0, 1]."""
    n, k = len(ok), int(np.sum(ok))
    lo, hi = wilson_interval(k, n, conf)
    cp_lo, cp_hi = clopper_pearson_interval(k, n, conf)
    return {
        "n": n,
        "n_correct": k,
        "accuracy": k / n if n else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "cp_low": cp_lo,
        "cp_high": cp_hi,
    }
