"""shiftlab.stats against hand-computed values."""

from __future__ import annotations

import math

import pytest

from shiftlab.stats import Summary, fmt_ci, fmt_g, fmt_num, fmt_pct, summarize, t_halfwidth


def test_summarize_one_to_five_matches_hand_computation() -> None:
    s = summarize([1, 2, 3, 4, 5])
    # std = sqrt(10 / 4); t_{0.975, 4} = 2.776445; ci = 2.776445 * 1.581139 / sqrt(5)
    assert s.n == 5
    assert s.mean == pytest.approx(3.0)
    assert s.std == pytest.approx(1.5811388, abs=1e-6)
    assert s.ci95 == pytest.approx(1.9632432, abs=1e-6)
    assert (s.low, s.high) == pytest.approx((3.0 - 1.9632432, 3.0 + 1.9632432), abs=1e-6)


def test_two_values_use_the_heavy_t_quantile() -> None:
    s = summarize([0.5, 0.7])
    # std = 0.141421; t_{0.975, 1} = 12.706205; ci = 12.706205 * 0.141421 / sqrt(2) = 1.2706205
    assert s.std == pytest.approx(0.1414214, abs=1e-6)
    assert s.ci95 == pytest.approx(1.2706205, abs=1e-6)


def test_three_seeds_and_constant_values() -> None:
    s = summarize([0.50, 0.52, 0.54])
    assert s.std == pytest.approx(0.02)
    assert s.ci95 == pytest.approx(4.302653 * 0.02 / math.sqrt(3), abs=1e-6)
    c = summarize([0.25] * 4)
    assert c == Summary(0.25, 0.0, 0.0, 4)


def test_single_value_has_no_interval() -> None:
    s = summarize([0.9])
    assert s.mean == 0.9 and s.std == 0.0 and s.n == 1 and math.isnan(s.ci95)
    assert fmt_pct(s.mean, s.ci95) == "90.00 ± n/a"
    assert math.isnan(t_halfwidth(1.0, 1))


def test_empty_is_an_error_and_nan_is_kept() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    assert math.isnan(summarize([1.0, float("nan")]).mean)


def test_confidence_level_is_a_parameter() -> None:
    # t_{0.95, 4} = 2.131847
    assert summarize([1, 2, 3, 4, 5], confidence=0.90).ci95 == pytest.approx(2.131847 * 1.5811388 / math.sqrt(5), abs=1e-5)


def test_formatting() -> None:
    assert fmt_pct(0.5312, 0.0104) == "53.12 ± 1.04"
    assert fmt_pct(None, None) == "n/a ± n/a"
    assert fmt_ci(0.123456, 0.001234) == "0.1235 ± 0.0012"
    assert fmt_num(float("inf")) == "n/a"
    assert fmt_g(1.234567e-5) == "1.235e-05"
