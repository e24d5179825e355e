"""Pure numpy: how far one model's outputs are from another's.

Shared by the optimizer's accuracy gate (optimized vs original on validation samples) and
by a shadow rollout (candidate vs serving chain on mirrored live requests). The sums are
kept apart so that a running comparison can add request after request
(kubeaccel_api.routing.add_output) and still report the same relative error the gate
computes over a whole sample set at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
EPS = 1e-12


@dataclass(frozen=True)
class OutputDivergence:
    """One output tensor: largest and summed absolute difference, and what it is relative to."""

    max_abs: float = 0.0
    abs_diff_sum: float = 0.0
    abs_ref_sum: float = 0.0
    # Values that are NaN/Inf in the candidate where the reference's are finite.
    non_finite: int = 0

    @property
    def rel_error(self) -> float:
        """Relative L1 error: sum|candidate - reference| / sum|reference|."""
        return self.abs_diff_sum / max(self.abs_ref_sum, EPS)


def output_divergence(reference: Array, candidate: Array) -> OutputDivergence:
    """Compare two outputs of the same shape over the elements finite in both."""
    ref64, got64 = reference.astype(np.float64), candidate.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: sorted out below
        diff = np.abs(got64 - ref64)
    if diff.size and np.isfinite(diff).all():
        # In float64 a finite difference means both sides are finite: the usual case, and
        # the one a shadow rollout pays for on every mirrored request.
        return OutputDivergence(
            max_abs=float(diff.max()),
            abs_diff_sum=float(diff.sum()),
            abs_ref_sum=float(np.abs(ref64).sum()),
        )
    finite_ref = np.isfinite(ref64)
    finite_got = np.isfinite(got64)
    non_finite = int((~finite_got & finite_ref).sum())
    mask = finite_ref & finite_got
    if not mask.any():
        return OutputDivergence(non_finite=non_finite)
    kept = diff[mask]
    return OutputDivergence(
        max_abs=float(kept.max()),
        abs_diff_sum=float(kept.sum()),
        abs_ref_sum=float(np.abs(ref64[mask]).sum()),
        non_finite=non_finite,
    )


def is_class_scores(output: Array) -> bool:
    """[batch, classes] floating point with more than one class: a classifier's output."""
    return output.ndim == 2 and output.shape[1] > 1 and output.dtype.kind == "f"


def top1(output: Array) -> Array:
    """The top-1 class of every row."""
    return np.asarray(np.argmax(output, axis=1))
