"""Summary statistics for repeated measurements (seeds or few-shot episodes).

Every number shiftlab reports over repetitions is a :class:`Summary`: the mean, the
sample standard deviation (``ddof=1``) and the half-width of the two-sided 95%
confidence interval of the mean from Student's t distribution,

    ci95 = t_{0.975, n-1} * std / sqrt(n),

which is what the papers we reproduce report over seeds (and, for few-shot learning,
over test episodes). With a single value the spread is unknown: ``std`` is 0 and
``ci95`` is ``nan`` (rendered as ``n/a``), never a misleading 0.

Non-finite inputs (a diverged run's ``nan``) are kept, so they show up in the mean
instead of being silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Summary", "summarize", "t_halfwidth", "fmt_ci", "fmt_g", "fmt_num", "fmt_pct"]

NA = "n/a"


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and 95% CI half-width of ``n`` values.

    Attributes:
        mean: arithmetic mean.
        std: sample standard deviation (``ddof=1``); 0 when ``n == 1``.
        ci95: half-width of the 95% Student-t confidence interval of the mean;
            ``nan`` when ``n == 1`` (unknown).
        n: number of values.
    """

    mean: float
    std: float
    ci95: float
    n: int

    @property
    def low(self) -> float:
        """Lower end of the 95% CI (``nan`` when ``n == 1``)."""
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        """Upper end of the 95% CI (``nan`` when ``n == 1``)."""
        return self.mean + self.ci95


def t_halfwidth(std: float, n: int, confidence: float = 0.95) -> float:
    """Half-width of the two-sided Student-t confidence interval of a mean.

    Args:
        std: sample standard deviation (``ddof=1``).
        n: number of values.
        confidence: coverage of the interval (0.95 for a 95% CI).

    Returns:
        ``t_{(1+confidence)/2, n-1} * std / sqrt(n)``; ``nan`` when ``n < 2``.
    """
    if n < 2:
        return math.nan
    q = float(_scipy_stats.t.ppf(0.5 + confidence / 2.0, df=n - 1))
    return q * std / math.sqrt(n)


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Summarize repeated measurements.

    Args:
        values: one value per seed (or per episode); at least one.
        confidence: coverage of the interval stored in ``Summary.ci95``.

    Returns:
        The :class:`Summary`. For a single value, ``std == 0`` and ``ci95`` is ``nan``.

    Raises:
        ValueError: if ``values`` is empty.

    Example:
        >>> s = summarize([1, 2, 3, 4, 5])
        >>> round(s.mean, 4), round(s.std, 4), round(s.ci95, 4), s.n
        (3.0, 1.5811, 1.9632, 5)
    """
    arr = np.asarray(list(values), dtype=np.float64).reshape(-1)
    n = int(arr.size)
    if n == 0:
        raise ValueError("summarize() needs at least one value")
    mean = float(arr.mean())
    if n == 1:
        return Summary(mean=mean, std=0.0, ci95=math.nan, n=1)
    std = float(arr.std(ddof=1))
    return Summary(mean=mean, std=std, ci95=t_halfwidth(std, n, confidence), n=n)


def _fmt(x: float | None, digits: int, scale: float = 1.0) -> str:
    if x is None or not math.isfinite(x):
        return NA
    return f"{x * scale:.{digits}f}"


def fmt_num(x: float | None, digits: int = 4, scale: float = 1.0) -> str:
    """Format one number (``x * scale``) with fixed decimals; ``None``/``nan``/inf -> ``n/a``."""
    return _fmt(x, digits, scale)


def fmt_g(x: float | None, sig: int = 4) -> str:
    """Format one number with ``sig`` significant digits (``1.235e-05``, ``0.1235``, ``123.5``)."""
    if x is None or not math.isfinite(x):
        return NA
    return f"{x:.{sig}g}"


def fmt_ci(mean: float | None, ci: float | None, digits: int = 4, scale: float = 1.0) -> str:
    """``"0.1234 ± 0.0056"``; an unknown CI gives ``"0.1234 ± n/a"``."""
    return f"{_fmt(mean, digits, scale)} ± {_fmt(ci, digits, scale)}"


def fmt_pct(mean: float | None, ci: float | None, digits: int = 2) -> str:
    """Format a fraction and its CI half-width as percentages.

    Args:
        mean: a fraction in [0, 1] (e.g. an accuracy of 0.5312).
        ci: the CI half-width, also as a fraction (``nan``/``None`` when unknown).
        digits: decimals to show.

    Returns:
        e.g. ``fmt_pct(0.5312, 0.0104) == "53.12 ± 1.04"``; ``"53.12 ± n/a"`` for ``n == 1``.
    """
    return fmt_ci(mean, ci, digits=digits, scale=100.0)
