"""The statistical accuracy gate: paired intervals, their coverage, and when data cannot decide."""

from __future__ import annotations

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import AccuracyBudget
from kubeaccel_runtime.optimize import stats
from kubeaccel_runtime.optimize.accuracy import compare, gate


def _figures(n: int, lost: int, gained: int, flips: int = 0):  # type: ignore[no-untyped-def]
    """Figures of a 2-class candidate over n labelled samples with the given discordant pairs.

    The original is right on every sample except the first `gained`; the candidate loses the
    first `lost` of the rest and gains the `gained`. `flips` more samples change class where
    both are wrong (agreement drops, accuracy does not).
    """
    labels = np.zeros(n, np.int64)
    ref = np.tile(np.array([[2.0, 0.0]], np.float32), (n, 1))
    ref[:gained] = [0.0, 2.0]  # original wrong here
    got = ref.copy()
    got[:gained] = [2.0, 0.0]  # candidate right where the original was wrong
    got[gained : gained + lost] = [0.0, 2.0]  # and wrong where it was right
    labels[gained + lost : gained + lost + flips] = 2  # a third class neither predicts
    got[gained + lost : gained + lost + flips] = [0.0, 2.0]
    return compare([ref], [got], labels)


def test_the_drop_interval_is_paired_and_counts_only_samples_that_flip():
    figures = _figures(450, lost=2, gained=0)
    assert (figures.lost, figures.gained, figures.samples) == (2, 0, 450)
    drop = figures.drop_interval
    assert drop is not None
    assert drop.value == pytest.approx(2 / 450)
    # Bonett-Price: (n12+1)/(n+2) - (n21+1)/(n+2) +- z * sqrt((p12+p21-d^2)/(n+2)).
    p12, p21 = 3 / 452, 1 / 452
    half = stats.Z95 * np.sqrt((p12 + p21 - (p12 - p21) ** 2) / 452)
    assert (drop.low, drop.high) == pytest.approx((p12 - p21 - half, p12 - p21 + half))


def test_no_flip_still_gives_an_interval_as_wide_as_the_sample_count_allows():
    few, many = stats.paired_drop(0, 0, 64), stats.paired_drop(0, 0, 540)
    assert few.value == many.value == 0.0
    assert few.high == pytest.approx(stats.Z95 * np.sqrt(2) / 66)
    assert few.high > 0.04 and many.high < 0.0052  # 64 samples cannot show a 1-point budget


def test_the_drop_interval_covers_the_true_drop_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, p_lost, p_gained = 200, 0.03, 0.01
    true_drop = p_lost - p_gained
    hits = 0
    trials = 2000
    for _ in range(trials):
        cells = rng.multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained])
        hits += stats.paired_drop(int(cells[0]), int(cells[1]), n).contains(true_drop)
    assert 0.93 <= hits / trials <= 0.985


def test_the_wilson_interval_of_agreement_never_leaves_zero_to_one():
    perfect = stats.wilson(64, 64)
    assert (
        perfect.value == 1.0
        and perfect.high == 1.0
        and perfect.low == pytest.approx(0.9434, abs=1e-4)
    )
    assert stats.wilson(0, 10).low == 0.0
    with pytest.raises(ValueError):
        stats.wilson(11, 10)
    with pytest.raises(ValueError):
        stats.paired_drop(5, 6, 10)


@pytest.mark.parametrize(
    ("budget", "lost_rate", "needed"),
    [(0.05, 0.0, 54), (0.01, 0.0, 276), (0.001, 0.0, 2770), (0.01, 0.004, 736)],
)
def test_samples_needed_for_a_budget_are_the_fewest_that_resolve_it(budget, lost_rate, needed):
    assert stats.samples_for_drop(budget, lost_rate) == needed
    at = stats.paired_drop(round(lost_rate * needed), 0, needed)
    before = stats.paired_drop(round(lost_rate * (needed - 1)), 0, needed - 1)
    assert at.high <= budget < before.high


def test_a_drop_exactly_on_the_budget_can_never_be_resolved():
    assert stats.samples_for_drop(0.01, 0.01, 0.0) is None


def test_samples_needed_for_an_agreement_floor():
    needed = stats.samples_for_agreement(0.98)
    assert needed is not None
    assert stats.wilson(needed, needed).low >= 0.98 > stats.wilson(needed - 1, needed - 1).low


def test_a_budget_decided_on_too_few_samples_is_reported_unresolved_with_what_would_resolve_it():
    figures = _figures(64, lost=0, gained=0)
    result = gate(figures, AccuracyBudget(max_accuracy_drop=0.01, min_top1_agreement=0.98))
    assert not result.resolved and result.samples == 64
    assert result.message is not None
    assert "accuracy drop 0.0000 (95 % CI -0.0420..0.0420) on 64 samples cannot resolve " in (
        result.message
    )
    assert "maxAccuracyDrop 0.01; about 276 samples" in result.message
    assert "cannot resolve minTop1Agreement 0.98; about 189 samples" in result.message
    wire = result.to_report()
    assert wire["resolved"] is False and wire["accuracyDrop"]["high"] == pytest.approx(
        0.042, abs=1e-4
    )


def test_enough_samples_resolve_the_budget_either_way():
    inside = gate(_figures(540, lost=0, gained=0), AccuracyBudget(max_accuracy_drop=0.01))
    assert inside.resolved and inside.message is None
    # 30 of 540 lost: clearly over a 1-point budget, and the data say so.
    outside = gate(_figures(540, lost=30, gained=0), AccuracyBudget(max_accuracy_drop=0.01))
    assert outside.resolved and outside.accuracy_drop is not None
    assert outside.accuracy_drop.low > 0.01


def test_budgets_without_an_interval_are_always_resolved():
    figures = _figures(10, lost=1, gained=0, flips=2)
    result = gate(figures, AccuracyBudget(max_abs_diff=0.5))
    assert result.resolved
    assert result.top1_agreement is not None and result.top1_agreement.value == pytest.approx(0.7)
    assert result.to_report()["top1Agreement"]["value"] == pytest.approx(0.7)
