"""Confidence intervals for the accuracy gate, and how many samples a budget needs.

Both models see the same validation samples, so the accuracy drop is a paired difference:
only the samples whose correctness flips carry information. Its interval is Bonett and
Price's adjusted Wald interval for paired proportions (Psychometrika 77, 2012): one pseudo
count is added to each discordant cell, which keeps the interval honest when no sample flips
(a plain Wald interval would then have zero width and "prove" anything on 10 samples).
Top-1 agreement is a single proportion: Wilson's score interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# Two-sided 95 %: the normal quantile 0.975.
Z95 = 1.959963984540054
CONFIDENCE = 0.95
# Sample counts are searched up to this; beyond it a budget is "not resolvable in practice".
MAX_SAMPLES = 10_000_000


@dataclass(frozen=True)
class Interval:
    """A figure and its two-sided confidence interval."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        """Whether `x` lies inside the closed interval."""
        return self.low <= x <= self.high

    def to_report(self) -> dict[str, float]:
        """The wire dict (value, low, high), rounded for reading."""
        return {
            "value": round(self.value, 6),
            "low": round(self.low, 6),
            "high": round(self.high, 6),
        }


def paired_drop(lost: int, gained: int, n: int, z: float = Z95) -> Interval:
    """Accuracy drop (before - after) with its paired interval.

    Args:
        lost: samples the original classified right and the candidate wrong.
        gained: samples the original classified wrong and the candidate right.
        n: samples both were run on.
    """
    if n < 1 or lost < 0 or gained < 0 or lost + gained > n:
        raise ValueError(f"need 0 <= lost + gained <= n and n >= 1, got {lost}, {gained}, {n}")
    p_lost = (lost + 1) / (n + 2)
    p_gained = (gained + 1) / (n + 2)
    centre = p_lost - p_gained
    se = math.sqrt(max(p_lost + p_gained - centre**2, 0.0) / (n + 2))
    return Interval(
        value=(lost - gained) / n,
        low=max(-1.0, centre - z * se),
        high=min(1.0, centre + z * se),
    )


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """A proportion (successes / n) with Wilson's score interval."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}, {n}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return Interval(value=p, low=max(0.0, centre - half), high=min(1.0, centre + half))


def _smallest(ok: Callable[[int], bool], start: int = 1) -> int | None:
    """Smallest n >= start with ok(n) true, assuming ok is monotone; None past MAX_SAMPLES."""
    hi = max(start, 1)
    while not ok(hi):
        if hi >= MAX_SAMPLES:
            return None
        hi = min(hi * 2, MAX_SAMPLES)
    lo = max(start, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def samples_for_drop(budget: float, lost_rate: float = 0.0, gained_rate: float = 0.0) -> int | None:
    """Samples needed for the drop interval to fall on one side of `budget`.

    The rates are the expected fractions of samples that flip each way; with no flips at all
    this is the least data that can show a drop <= budget (about 2.77 / budget). None: the
    expected drop equals the budget, or more than MAX_SAMPLES would be needed.
    """
    drop = lost_rate - gained_rate
    below = drop <= budget

    def ok(n: int) -> bool:
        interval = paired_drop(round(lost_rate * n), round(gained_rate * n), n)
        return interval.high <= budget if below else interval.low > budget

    return _smallest(ok)


def samples_for_agreement(threshold: float, agreement: float = 1.0) -> int | None:
    """Samples needed for the agreement interval to fall on one side of `threshold`."""
    above = agreement >= threshold

    def ok(n: int) -> bool:
        interval = wilson(round(agreement * n), n)
        return interval.low >= threshold if above else interval.high < threshold

    return _smallest(ok)


def resolves_drop(interval: Interval, budget: float) -> bool:
    """Whether the drop interval lies wholly inside (<=) or wholly outside (>) the budget."""
    return interval.high <= budget or interval.low > budget


def resolves_agreement(interval: Interval, threshold: float) -> bool:
    """Whether the agreement interval lies wholly above (>=) or wholly below the threshold."""
    return interval.low >= threshold or interval.high < threshold
