"""autotrick.stats against scipy's own functions and worked examples."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from autotrick.stats import holm, mean_interval, p_text, paired_comparison


def test_mean_interval_is_students_t_interval() -> None:
    values = [0.91, 0.93, 0.92, 0.95, 0.90]
    interval = mean_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 5, scale=scipy_stats.sem(values))
    assert interval.low == pytest.approx(low) and interval.high == pytest.approx(high)
    assert interval.sd == pytest.approx(scipy_stats.tstd(values)) and interval.n == 5


def test_paired_comparison_is_scipys_paired_t_test_on_the_differences() -> None:
    a, b = [0.95, 0.96, 0.94, 0.97, 0.95], [0.93, 0.95, 0.93, 0.94, 0.94]
    test = paired_comparison(a, b)
    expected = scipy_stats.ttest_rel(a, b)
    assert test.p == pytest.approx(expected.pvalue)
    ci = expected.confidence_interval(0.95)
    assert (test.difference.low, test.difference.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert test.difference.mean == pytest.approx(0.016)


def test_equal_differences_give_a_p_value_not_nan() -> None:
    same = paired_comparison([0.9] * 5, [0.9] * 5)  # every difference 0: scipy says NaN
    assert same.p == 1.0 and same.difference.mean == 0 and same.difference.low == same.difference.high == 0
    shifted = paired_comparison([0.91, 0.92, 0.93], [0.90, 0.91, 0.92])  # one step of 1/N on every seed
    assert not math.isnan(shifted.p) and shifted.difference.mean == pytest.approx(0.01)


def test_a_paired_test_needs_two_pairs() -> None:
    with pytest.raises(ValueError):
        paired_comparison([0.9], [0.8])


def test_holm_adjusts_step_down_and_keeps_the_order() -> None:
    # Holm (1979)'s scheme: sorted p (0.01, 0.02, 0.04) x (3, 2, 1) -> 0.03, 0.04, 0.04 (made monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_p_values_read_as_words() -> None:
    assert p_text(0.41) == "p = 0.41" and p_text(0.0001) == "p < 0.001"
