"""divergence.py: output differences that add up request by request."""

from __future__ import annotations

import numpy as np
import pytest
from kubeaccel_api.routing import OutputCounters, add_output
from kubeaccel_runtime.divergence import OutputDivergence, is_class_scores, output_divergence


def test_finite_outputs_give_the_largest_and_summed_difference() -> None:
    ref = np.array([[1.0, -2.0], [3.0, 0.0]], np.float32)
    got = np.array([[1.5, -2.0], [2.0, 0.25]], np.float32)
    div = output_divergence(ref, got)
    assert div == OutputDivergence(max_abs=1.0, abs_diff_sum=1.75, abs_ref_sum=6.0)
    assert div.rel_error == pytest.approx(1.75 / 6.0)


def test_non_finite_values_are_counted_and_left_out_of_the_sums() -> None:
    ref = np.array([1.0, np.inf, np.nan, 2.0, 4.0])
    got = np.array([1.5, np.inf, 3.0, np.nan, -np.inf])
    div = output_divergence(ref, got)
    assert div == OutputDivergence(max_abs=0.5, abs_diff_sum=0.5, abs_ref_sum=1.0, non_finite=2)


def test_divergences_add_up_like_one_comparison_over_all_rows() -> None:
    rng = np.random.default_rng(0)
    ref, got = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    total: OutputCounters | None = None
    for i in range(0, 6, 2):
        d = output_divergence(ref[i : i + 2], got[i : i + 2])
        part = OutputCounters(
            max_abs_diff=d.max_abs, abs_diff_sum=d.abs_diff_sum, abs_ref_sum=d.abs_ref_sum
        )
        total = part if total is None else add_output(total, part)
    whole = output_divergence(ref, got)
    assert total is not None and total.max_abs_diff == whole.max_abs
    assert total.abs_diff_sum / total.abs_ref_sum == pytest.approx(whole.rel_error)


def test_class_scores_are_float_batch_by_classes() -> None:
    assert is_class_scores(np.zeros((2, 10), np.float32))
    assert not is_class_scores(np.zeros((2, 1), np.float32))
    assert not is_class_scores(np.zeros((2, 10), np.int64))
    assert not is_class_scores(np.zeros((2, 3, 4), np.float32))
