"""Summaries over seeds: mean ± sd per arm, and an arm's difference to the baseline paired
over seeds with a Student-t interval (the seeds are the unit of replication: one seed fixes
the data, the pretraining, the teacher and every student's initialisation)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    sd: float  # sample standard deviation (n - 1); nan for n < 2


@dataclass(frozen=True)
class PairedDifference:
    n: int
    mean: float
    sd: float
    low: float   # confidence interval of the mean difference
    high: float
    wins: int    # seeds where the arm beat the baseline

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def summarize(values: Sequence[float]) -> Summary:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"summarize needs a non-empty list of numbers, got shape {v.shape}")
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return Summary(int(v.size), float(v.mean()), sd)


def paired_difference(arm: Sequence[float], base: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Mean of arm[i] - base[i] over seeds i with the t interval
    mean ± t_{(1+confidence)/2, n-1} · sd / sqrt(n); the interval is nan for one seed."""
    from scipy import stats

    a, b = np.asarray(arm, np.float64), np.asarray(base, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_difference needs two lists of the same non-zero length, got {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = a - b
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(n, mean, math.nan, math.nan, math.nan, int((d > 0).sum()))
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(n, mean, sd, mean - half, mean + half, int((d > 0).sum()))


def paired_p_value(arm: Sequence[float], base: Sequence[float]) -> float:
    """Two-sided p-value of the paired t test that the mean difference is 0 (nan below two
    seeds or when every difference is the same)."""
    from scipy import stats

    d = np.asarray(arm, np.float64) - np.asarray(base, np.float64)
    if d.size < 2 or float(d.std(ddof=1)) == 0.0:
        return math.nan
    t = float(d.mean()) / (float(d.std(ddof=1)) / math.sqrt(d.size))
    return float(2 * stats.t.sf(abs(t), d.size - 1))


def equivalence_bound(arm: Sequence[float], base: Sequence[float], alpha: float = 0.05) -> float:
    """The smallest margin m for which two one-sided t tests at level `alpha` show the mean
    difference inside (-m, m): the larger end, in absolute value, of the 1 - 2·alpha t
    interval (nan below two seeds)."""
    d = paired_difference(arm, base, confidence=1 - 2 * alpha)
    return max(abs(d.low), abs(d.high))


def holm(p_values: Sequence[float]) -> list:
    """Holm's step-down adjustment of the p-values of several tests (family-wise error); a
    nan p-value stays nan and does not count as a test."""
    p = [float(x) for x in p_values]
    idx = sorted((i for i in range(len(p)) if not math.isnan(p[i])), key=lambda i: p[i])
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
