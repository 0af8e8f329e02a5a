"""The statistics of confirmation and ablation, and nothing else: a mean with its interval, a
paired comparison with its p-value, and Holm's correction for several comparisons.

Why these:
- seeds are few (5 by default), so intervals use Student's t, not the normal's 1.96;
- the comparison is paired (seed s of a recipe and seed s of the baseline share data order and
  initialization), so it is a test on the per-seed differences: the paired t-test
  (scipy.stats.ttest_rel). The Wilcoxon signed-rank test would need no normality, but at 5 pairs its
  smallest two-sided p is 2/2^5 = 0.0625: it could never call a gain significant at 0.05;
- k recipes compared with one baseline are k tests: Holm's step-down correction keeps the chance
  of any false "significant" at alpha, and is never weaker than Bonferroni's (a few lines, below:
  scipy has no Holm; statsmodels' multipletests would be a dependency for five lines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95   # the intervals' confidence level
ALPHA = 0.05   # significance level of the corrected tests
TEST_NAME = "paired t-test"


@dataclass(frozen=True)
class Interval:
    """A sample's mean with its two-sided `level` interval (Student's t) and standard deviation."""

    mean: float
    low: float
    high: float
    sd: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of `values` and its t interval; with one value the interval is the value itself."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval of no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, mean, mean, 0.0, 1)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


@dataclass(frozen=True)
class PairedComparison:
    """`a - b` over paired samples: the mean difference, its interval, and the paired t-test's
    two-sided p-value (uncorrected; see `holm`)."""

    difference: Interval
    p: float

    @property
    def n(self) -> int:
        return self.difference.n


def paired_comparison(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> PairedComparison:
    """The paired t-test of `a` against `b` (same length, pair i measured with the same seed).

    When every difference is the same (e.g. all 0 on a small validation set, where accuracies
    move in steps of 1/N), the t statistic is 0/0 or d/0 and scipy returns NaN: then p is 1 for
    a zero difference and 0 for a constant non-zero one (the limit of the test as the spread
    goes to 0), so that no NaN reaches the user."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_comparison needs two samples of the same length >= 2, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    interval = mean_interval(differences, level)
    if interval.sd == 0 or all(d == differences[0] for d in differences):
        p = 1.0 if interval.mean == 0 else 0.0
        return PairedComparison(Interval(interval.mean, interval.mean, interval.mean, 0.0, len(a)), p)
    p = float(stats.ttest_rel(a, b).pvalue)
    return PairedComparison(interval, p if math.isfinite(p) else 1.0)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: sorted ascending, the i-th
    (0-based) of m is multiplied by m - i, made non-decreasing, capped at 1. An adjusted p below
    alpha rejects at family-wise error rate alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def p_text(p: float) -> str:
    """A p-value for reading: two significant digits, small ones as < 0.001."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


__all__ = ["ALPHA", "LEVEL", "TEST_NAME", "Interval", "PairedComparison", "holm", "mean_interval",
           "p_text", "paired_comparison"]
