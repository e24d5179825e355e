"""The accuracy gate: figures, budget checks and their messages."""

from __future__ import annotations

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import AccuracyBudget
from kubeaccel_runtime.optimize.accuracy import (
    check_budget,
    check_budget_applies,
    compare,
    violations,
)
from kubeaccel_runtime.optimize.errors import BudgetExceeded, DataError


def _logits() -> np.ndarray:
    return np.array(
        [[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 2.5, 0.0]], np.float32
    )


def test_identical_outputs_give_zero_difference_and_full_agreement():
    ref = _logits()
    figures = compare([ref], [ref.copy()], np.array([0, 1, 2, 1]))
    assert figures.max_abs_diff == 0.0 and figures.mean_rel_error == 0.0
    assert figures.top1_agreement == 1.0
    assert figures.accuracy_before == figures.accuracy_after == 1.0
    assert figures.samples == 4 and figures.non_finite == 0


def test_figures_measure_abs_diff_relative_error_agreement_and_labelled_accuracy():
    ref = _logits()
    got = ref.copy()
    got[3] = [3.0, 2.5, 0.0]  # flips sample 3 from class 1 to class 0
    figures = compare([ref], [got], np.array([0, 1, 2, 1]))
    assert figures.max_abs_diff == pytest.approx(1.0)
    assert figures.mean_rel_error == pytest.approx(1.0 / np.abs(ref).sum())
    assert figures.top1_agreement == 0.75
    assert (figures.accuracy_before, figures.accuracy_after) == (1.0, 0.75)


def test_non_classifier_outputs_have_no_top1_figures():
    ref = np.ones((4, 3, 2), np.float32)
    figures = compare([ref], [ref + 0.5], None)
    assert figures.top1_agreement is None and figures.accuracy_before is None
    assert figures.max_abs_diff == pytest.approx(0.5)


def test_nan_or_inf_outputs_always_break_the_budget():
    ref = _logits()
    got = ref.copy()
    got[0, 0] = np.inf
    got[1, 1] = np.nan
    figures = compare([ref], [got], None)
    assert figures.non_finite == 2
    assert violations(figures, AccuracyBudget()) == [
        "2 output values are NaN/Inf where the original's are finite"
    ]


def test_budget_exceeded_message_carries_every_broken_figure():
    ref = _logits()
    got = ref + 0.5
    got[3] = [3.0, 2.5, 0.0]
    figures = compare([ref], [got], np.array([0, 1, 2, 1]))
    budget = AccuracyBudget(
        max_abs_diff=0.1, max_mean_rel_error=0.01, min_top1_agreement=0.9, max_accuracy_drop=0.1
    )
    with pytest.raises(BudgetExceeded) as info:
        check_budget(figures, budget, "static-int8")
    message = str(info.value)
    assert message.startswith("static-int8 is outside the accuracy budget on 4 validation samples")
    assert "maxAbsDiff 1 > budget 0.1" in message
    assert "meanRelError" in message and "> budget 0.01" in message
    assert "top1Agreement 0.7500 < budget 0.9" in message
    assert "accuracy 1.0000 -> 0.7500 (drop 0.2500) > budget 0.1" in message


def test_figures_inside_the_budget_pass():
    ref = _logits()
    figures = compare([ref], [ref + 0.01], np.array([0, 1, 2, 1]))
    check_budget(figures, AccuracyBudget(max_abs_diff=0.02, max_accuracy_drop=0.0), "fp16")


def test_a_top1_budget_on_a_non_classifier_is_a_data_error():
    with pytest.raises(DataError, match="minTop1Agreement needs a classifier"):
        check_budget_applies(AccuracyBudget(min_top1_agreement=0.9), [np.ones((2, 3, 4))], False)


def test_an_accuracy_budget_without_labels_is_a_data_error():
    with pytest.raises(DataError, match="maxAccuracyDrop needs labelled validation data"):
        check_budget_applies(AccuracyBudget(max_accuracy_drop=0.01), [_logits()], False)
    check_budget_applies(AccuracyBudget(max_accuracy_drop=0.01), [_logits()], True)
