"""Pure: which limits of an accuracy budget a set of measured figures breaks.

One rule book for the optimizer's offline gate (validation samples) and for a shadow
rollout's live comparison (mirrored requests), so both say the same thing the same way.
"""

from __future__ import annotations

from kubeaccel_api.v1alpha1 import AccuracyBudget

# Accuracy may drop by exactly the budget; float noise must not tip it over.
_DROP_SLACK = 1e-12


def budget_violations(
    budget: AccuracyBudget,
    *,
    max_abs_diff: float,
    mean_rel_error: float | None,
    top1_agreement: float | None,
    non_finite: int = 0,
    accuracy_before: float | None = None,
    accuracy_after: float | None = None,
) -> list[str]:
    """Every way the figures break `budget` (empty when inside it).

    A figure that was not measured (None) breaks nothing: the callers check beforehand
    that the budget only asks for figures they can measure.
    """
    out: list[str] = []
    if non_finite:
        out.append(f"{non_finite} output values are NaN/Inf where the original's are finite")
    if budget.max_abs_diff is not None and max_abs_diff > budget.max_abs_diff:
        out.append(f"maxAbsDiff {max_abs_diff:.6g} > budget {budget.max_abs_diff:g}")
    if (
        budget.max_mean_rel_error is not None
        and mean_rel_error is not None
        and mean_rel_error > budget.max_mean_rel_error
    ):
        out.append(f"meanRelError {mean_rel_error:.6g} > budget {budget.max_mean_rel_error:g}")
    if (
        budget.min_top1_agreement is not None
        and top1_agreement is not None
        and top1_agreement < budget.min_top1_agreement
    ):
        out.append(f"top1Agreement {top1_agreement:.4f} < budget {budget.min_top1_agreement:g}")
    if (
        budget.max_accuracy_drop is not None
        and accuracy_before is not None
        and accuracy_after is not None
    ):
        drop = accuracy_before - accuracy_after
        if drop > budget.max_accuracy_drop + _DROP_SLACK:
            out.append(
                f"accuracy {accuracy_before:.4f} -> {accuracy_after:.4f} "
                f"(drop {drop:.4f}) > budget {budget.max_accuracy_drop:g}"
            )
    return out
