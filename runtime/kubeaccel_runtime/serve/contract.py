"""The tensor contract one shard enforces: input rules, output rules and request limits.

Shard 0 takes its input rules from the spec's `inputs` (the user's contract), tightened by
the model's own signature; later shards take them from their own signature. Output rules
come from the spec's `outputs` for the model outputs, else from the signature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kubeaccel_api.v1alpha1 import DType, TensorSpec

from kubeaccel_runtime.serve.dtypes import OIP_NAME


@dataclass(frozen=True)
class TensorRule:
    """What one tensor must look like; -1 in `shape` is a dynamic dimension."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    min: float | None = None
    max: float | None = None
    reject_non_finite: bool = False

    @property
    def datatype(self) -> str:
        """OIP v2 datatype name."""
        return OIP_NAME[self.dtype]

    @property
    def batched(self) -> bool:
        """Whether dimension 0 is dynamic (a batch dimension)."""
        return bool(self.shape) and self.shape[0] == -1

    def shape_text(self) -> str:
        """Shape as written in error messages, e.g. [-1, 784]."""
        return "[" + ", ".join(str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class Contract:
    """Input rules, output rules and limits of one served shard."""

    inputs: tuple[TensorRule, ...]
    outputs: tuple[TensorRule, ...]
    max_request_bytes: int
    max_batch: int

    @property
    def max_input_values(self) -> int | None:
        """Most values one valid request can carry (None if a non-batch dim is dynamic)."""
        total = 0
        for rule in self.inputs:
            dims = rule.shape[1:] if rule.batched else rule.shape
            if any(d == -1 for d in dims):
                return None
            total += (self.max_batch if rule.batched else 1) * math.prod(dims)
        return total

    def input(self, name: str) -> TensorRule | None:
        """The rule of input `name`, if any."""
        return next((r for r in self.inputs if r.name == name), None)

    def output(self, name: str) -> TensorRule | None:
        """The rule of output `name`, if any."""
        return next((r for r in self.outputs if r.name == name), None)


class ContractMismatch(ValueError):
    """The declared contract and the model's signature cannot both hold."""


def merge_shape(name: str, declared: Sequence[int], actual: Sequence[int]) -> tuple[int, ...]:
    """The stricter of two shapes (a fixed dim wins over -1); ContractMismatch if they clash."""
    if len(declared) != len(actual):
        raise ContractMismatch(
            f"{name}: contract shape {list(declared)} has rank {len(declared)}, "
            f"the model's {list(actual)} has rank {len(actual)}"
        )
    merged = []
    for d, a in zip(declared, actual, strict=True):
        if d != -1 and a != -1 and d != a:
            raise ContractMismatch(
                f"{name}: contract shape {list(declared)} does not match the model's {list(actual)}"
            )
        merged.append(d if d != -1 else a)
    return tuple(merged)


def rule_from_signature(
    name: str, dtype: DType, shape: Sequence[int], *, reject_non_finite: bool
) -> TensorRule:
    """A rule from a model signature alone (no range)."""
    return TensorRule(name, dtype, tuple(shape), reject_non_finite=reject_non_finite)


def rules_from_spec(
    declared: Sequence[TensorSpec],
    signature: Sequence[TensorRule],
    *,
    kind: str,
    non_finite_default: bool,
) -> tuple[TensorRule, ...]:
    """Rules for the tensors of `signature`, tightened by the spec's `declared` contract.

    Every declared tensor must exist in the signature with the same dtype and a
    compatible shape; signature tensors the spec does not declare keep the signature's rule.
    """
    by_name = {r.name: r for r in signature}
    unknown = [t.name for t in declared if t.name not in by_name]
    if unknown:
        raise ContractMismatch(
            f"spec.{kind} names {unknown} that the model does not have "
            f"(model {kind}: {sorted(by_name)})"
        )
    declared_by_name = {t.name: t for t in declared}
    rules = []
    for sig in signature:
        spec = declared_by_name.get(sig.name)
        if spec is None:
            rules.append(sig)
            continue
        if spec.dtype != sig.dtype:
            raise ContractMismatch(
                f"spec.{kind} {sig.name}: dtype {spec.dtype.value} but the model has {sig.dtype.value}"
            )
        rules.append(
            TensorRule(
                name=sig.name,
                dtype=sig.dtype,
                shape=merge_shape(sig.name, spec.shape, sig.shape),
                min=spec.range.min if spec.range else None,
                max=spec.range.max if spec.range else None,
                reject_non_finite=(
                    non_finite_default if spec.reject_non_finite is None else spec.reject_non_finite
                ),
            )
        )
    return tuple(rules)
