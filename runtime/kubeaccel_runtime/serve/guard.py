"""Output guard: what leaves the server must match the output contract."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kubeaccel_runtime.serve.contract import TensorRule
from kubeaccel_runtime.serve.dtypes import NUMPY, is_float
from kubeaccel_runtime.serve.errors import ContractViolation, OutputRejected

Array = np.ndarray[Any, Any]


def guard_outputs(
    outputs: Mapping[str, Array],
    rules: Sequence[TensorRule],
    batch: int,
    on_non_finite: Callable[[str], None],
) -> None:
    """Check dtype, rank, fixed dims and batch rows of every output; count and maybe reject NaN/Inf.

    Raises:
        ContractViolation: the model broke its own contract (a bug in the artifact, 500).
        OutputRejected: an output holds NaN/Inf and its rule rejects them (422).
    """
    for rule in rules:
        arr = outputs.get(rule.name)
        if arr is None:
            raise ContractViolation(f"the model produced no output {rule.name!r}", reason="output")
        if arr.dtype != NUMPY[rule.dtype]:
            raise ContractViolation(
                f"output {rule.name!r} has dtype {arr.dtype}, the contract says {rule.dtype.value}",
                reason="output",
            )
        shape = arr.shape
        fixed_ok = all(w in (-1, g) for g, w in zip(shape, rule.shape, strict=False))
        if len(shape) != len(rule.shape) or not fixed_ok:
            raise ContractViolation(
                f"output {rule.name!r} has shape {list(shape)}, the contract says "
                f"{rule.shape_text()}",
                reason="output",
            )
        if rule.batched and shape[0] != batch:
            raise ContractViolation(
                f"output {rule.name!r} has {shape[0]} rows for a batch of {batch}", reason="output"
            )
        if is_float(rule.dtype) and arr.size and not np.isfinite(arr).all():
            on_non_finite(rule.name)
            if rule.reject_non_finite:
                raise OutputRejected(
                    f"output {rule.name!r} contains NaN or Inf for this input "
                    f"(rejectNonFinite is set for this output)",
                    reason="non_finite_output",
                )
