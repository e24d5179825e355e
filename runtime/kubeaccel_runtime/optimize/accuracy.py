"""The accuracy gate: compare optimized vs original outputs and check the budget.

The budget is decided on the figures measured on the validation samples; the gate also
says how sure those figures are (95 % intervals, `stats`) and whether the samples can
resolve the budget at all (`gate`), so a decision on too few samples is never silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kubeaccel_api.budget import budget_violations
from kubeaccel_api.v1alpha1 import AccuracyBudget

from kubeaccel_runtime.divergence import is_class_scores, output_divergence, top1
from kubeaccel_runtime.optimize import stats
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.optimize.errors import BudgetExceeded, DataError
from kubeaccel_runtime.optimize.session import Chain

EVAL_BATCH = 64


@dataclass(frozen=True)
class AccuracyFigures:
    """How far a candidate's outputs are from the original's on the validation samples.

    mean_rel_error is relative L1 error: sum|optimized - original| / sum|original|, taken over
    every element of an output (worst output reported); it stays meaningful near zero values.
    """

    samples: int
    max_abs_diff: float
    mean_rel_error: float
    top1_agreement: float | None
    accuracy_before: float | None
    accuracy_after: float | None
    non_finite: int
    # Paired counts behind the intervals: samples whose top-1 class is unchanged, and
    # (labelled data) samples the candidate gets wrong where the original was right / vice versa.
    agreed: int | None = None
    lost: int | None = None
    gained: int | None = None

    @property
    def drop_interval(self) -> stats.Interval | None:
        """Accuracy drop with its paired 95 % interval (labelled classifiers only)."""
        if self.lost is None or self.gained is None or not self.samples:
            return None
        return stats.paired_drop(self.lost, self.gained, self.samples)

    @property
    def agreement_interval(self) -> stats.Interval | None:
        """Top-1 agreement with its 95 % Wilson interval (classifiers only)."""
        if self.agreed is None or not self.samples:
            return None
        return stats.wilson(self.agreed, self.samples)

    def to_report(self) -> dict[str, Any]:
        """camelCase fields for report.json."""
        drop, agreement = self.drop_interval, self.agreement_interval
        return {
            "samples": self.samples,
            "maxAbsDiff": self.max_abs_diff,
            "meanRelError": self.mean_rel_error,
            "top1Agreement": self.top1_agreement,
            "top1AgreementInterval": agreement.to_report() if agreement else None,
            "accuracyBefore": self.accuracy_before,
            "accuracyAfter": self.accuracy_after,
            "accuracyDropInterval": drop.to_report() if drop else None,
            "nonFiniteOutputs": self.non_finite,
        }


@dataclass(frozen=True)
class Gate:
    """What the samples can and cannot tell about a candidate against the budget."""

    samples: int
    accuracy_drop: stats.Interval | None
    top1_agreement: stats.Interval | None
    problems: tuple[str, ...]

    @property
    def resolved(self) -> bool:
        """Whether every statistical budget is decided by the data at 95 %."""
        return not self.problems

    @property
    def message(self) -> str | None:
        """Why the data cannot resolve the budget, and how many samples would (or None)."""
        return "; ".join(self.problems) if self.problems else None

    def to_report(self) -> dict[str, Any]:
        """camelCase fields (the AccuracyGateStatus wire shape)."""
        out: dict[str, Any] = {
            "samples": self.samples,
            "confidence": stats.CONFIDENCE,
            "resolved": self.resolved,
        }
        if self.accuracy_drop is not None:
            out["accuracyDrop"] = self.accuracy_drop.to_report()
        if self.top1_agreement is not None:
            out["top1Agreement"] = self.top1_agreement.to_report()
        if self.message:
            out["message"] = self.message
        return out


def _needed(count: int | None) -> str:
    if count is None:
        return "no feasible number of samples would (the figure sits on the limit)"
    return f"about {count} samples at the observed rates would"


def gate(figures: AccuracyFigures, budget: AccuracyBudget) -> Gate:
    """Intervals of the statistical figures, and which budget limits they cannot resolve.

    A limit is resolved when its 95 % interval lies wholly on one side of it. maxAbsDiff and
    maxMeanRelError are worst cases over the samples and have no interval here.
    """
    n = figures.samples
    drop, agreement = figures.drop_interval, figures.agreement_interval
    problems: list[str] = []
    limit = budget.max_accuracy_drop
    if limit is not None and drop is not None and not stats.resolves_drop(drop, limit):
        assert figures.lost is not None and figures.gained is not None
        need = stats.samples_for_drop(limit, figures.lost / n, figures.gained / n)
        problems.append(
            f"accuracy drop {drop.value:.4f} (95 % CI {drop.low:.4f}..{drop.high:.4f}) on {n} "
            f"samples cannot resolve maxAccuracyDrop {limit:g}; {_needed(need)}"
        )
    floor = budget.min_top1_agreement
    if (
        floor is not None
        and agreement is not None
        and not stats.resolves_agreement(agreement, floor)
    ):
        need = stats.samples_for_agreement(floor, agreement.value)
        problems.append(
            f"top-1 agreement {agreement.value:.4f} (95 % CI {agreement.low:.4f}..{agreement.high:.4f}) "
            f"on {n} samples cannot resolve minTop1Agreement {floor:g}; {_needed(need)}"
        )
    return Gate(n, drop, agreement, tuple(problems))


def run_all(chain: Chain, samples: Samples, batch: int = EVAL_BATCH) -> list[np.ndarray]:
    """Every output over all samples, in batches, concatenated along the first axis."""
    parts: list[list[np.ndarray]] = []
    for feeds in samples.batches(batch):
        parts.append(chain.run(feeds))
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]


def is_classifier(outputs: Sequence[np.ndarray]) -> bool:
    """First output is [batch, classes] floating point with more than one class."""
    return is_class_scores(outputs[0])


def compare(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    labels: np.ndarray | None,
) -> AccuracyFigures:
    """Figures of `candidate` against `reference` (same samples, same output order)."""
    per_output = [output_divergence(r, g) for r, g in zip(reference, candidate, strict=True)]
    agreement = before = after = None
    agreed = lost = gained = None
    if is_classifier(reference):
        ref_top, got_top = top1(reference[0]), top1(candidate[0])
        agreed = int(np.sum(ref_top == got_top))
        agreement = agreed / len(ref_top)
        if labels is not None:
            right_before, right_after = ref_top == labels, got_top == labels
            before = float(np.mean(right_before))
            after = float(np.mean(right_after))
            lost = int(np.sum(right_before & ~right_after))
            gained = int(np.sum(~right_before & right_after))
    return AccuracyFigures(
        samples=int(reference[0].shape[0]),
        max_abs_diff=max((d.max_abs for d in per_output), default=0.0),
        mean_rel_error=max((d.rel_error for d in per_output), default=0.0),
        top1_agreement=agreement,
        accuracy_before=before,
        accuracy_after=after,
        non_finite=sum(d.non_finite for d in per_output),
        agreed=agreed,
        lost=lost,
        gained=gained,
    )


def check_budget_applies(
    budget: AccuracyBudget, reference: Sequence[np.ndarray], labelled: bool
) -> None:
    """Fail early when the budget asks for a figure these outputs/data cannot give.

    Raises:
        DataError: top-1 budget on a non-classifier, or accuracy budget without labels.
    """
    if budget.min_top1_agreement is not None and not is_classifier(reference):
        raise DataError(
            "accuracyBudget.minTop1Agreement needs a classifier ([batch, classes] output); "
            f"the first output has shape {list(reference[0].shape)}"
        )
    if budget.max_accuracy_drop is not None and not (labelled and is_classifier(reference)):
        raise DataError(
            "accuracyBudget.maxAccuracyDrop needs labelled validation data "
            "(an .npz with a `labels` array) and a classifier"
        )


def violations(figures: AccuracyFigures, budget: AccuracyBudget) -> list[str]:
    """Every way `figures` break `budget` (empty when inside it)."""
    return budget_violations(
        budget,
        max_abs_diff=figures.max_abs_diff,
        mean_rel_error=figures.mean_rel_error,
        top1_agreement=figures.top1_agreement,
        non_finite=figures.non_finite,
        accuracy_before=figures.accuracy_before,
        accuracy_after=figures.accuracy_after,
    )


def check_budget(figures: AccuracyFigures, budget: AccuracyBudget, what: str) -> None:
    """Raise BudgetExceeded, with every figure in the message, when `figures` break `budget`."""
    broken = violations(figures, budget)
    if broken:
        raise BudgetExceeded(
            f"{what} is outside the accuracy budget on {figures.samples} validation samples: "
            + "; ".join(broken)
        )
