"""The accuracy gate: compare optimized vs original outputs and check the budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kubeaccel_api.budget import budget_violations
from kubeaccel_api.v1alpha1 import AccuracyBudget

from kubeaccel_runtime.divergence import is_class_scores, output_divergence, top1
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

    def to_report(self) -> dict[str, Any]:
        """camelCase fields for report.json."""
        return {
            "samples": self.samples,
            "maxAbsDiff": self.max_abs_diff,
            "meanRelError": self.mean_rel_error,
            "top1Agreement": self.top1_agreement,
            "accuracyBefore": self.accuracy_before,
            "accuracyAfter": self.accuracy_after,
            "nonFiniteOutputs": self.non_finite,
        }


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
    if is_classifier(reference):
        ref_top, got_top = top1(reference[0]), top1(candidate[0])
        agreement = float(np.mean(ref_top == got_top))
        if labels is not None:
            before = float(np.mean(ref_top == labels))
            after = float(np.mean(got_top == labels))
    return AccuracyFigures(
        samples=int(reference[0].shape[0]),
        max_abs_diff=max((d.max_abs for d in per_output), default=0.0),
        mean_rel_error=max((d.rel_error for d in per_output), default=0.0),
        top1_agreement=agreement,
        accuracy_before=before,
        accuracy_after=after,
        non_finite=sum(d.non_finite for d in per_output),
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
