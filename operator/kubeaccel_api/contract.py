"""Pure: how a written inputs/outputs contract disagrees with a model's tensors.

Shared by the optimization Job (against the model it loads), `kubeaccel init` (against
--input) and the operator (against the contract the Job recorded in status).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kubeaccel_api.v1alpha1 import DType


class Tensor(Protocol):
    """A named tensor: the API's TensorSpec, or the runtime's TensorInfo."""

    @property
    def name(self) -> str:
        """Tensor name."""

    @property
    def dtype(self) -> DType:
        """Element type."""

    @property
    def shape(self) -> Sequence[int]:
        """Dimensions; -1 is dynamic."""


def contract_problems(
    declared_inputs: Sequence[Tensor],
    declared_outputs: Sequence[Tensor] | None,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    *,
    where: str = "spec",
    model: str = "the model",
) -> list[str]:
    """Every way a declared contract disagrees with a model's tensors (names, dtypes, shapes).

    Every model input must be declared; every dimension the model fixes must be declared
    with that size (-1 would promise requests a freedom the model does not have).
    """
    problems: list[str] = []
    model_in = {t.name: t for t in inputs}
    declared_names = {t.name for t in declared_inputs}
    missing = [n for n in model_in if n not in declared_names]
    if missing:
        problems.append(f"{where}.inputs lacks model input(s): {', '.join(missing)}")
    groups: list[tuple[str, Sequence[Tensor], dict[str, Tensor]]] = [
        ("inputs", declared_inputs, model_in)
    ]
    if declared_outputs:
        groups.append(("outputs", declared_outputs, {t.name: t for t in outputs}))
    for field_name, tensors, tensors_of_model in groups:
        for i, want in enumerate(tensors):
            label = f"{where}.{field_name}[{i}] ({want.name})"
            got = tensors_of_model.get(want.name)
            if got is None:
                has = ", ".join(tensors_of_model)
                problems.append(f"{label}: {model} has no such tensor (has: {has})")
                continue
            if got.dtype != want.dtype:
                problems.append(
                    f"{label}: dtype {want.dtype.value}, {model}'s is {got.dtype.value}"
                )
            if len(got.shape) != len(want.shape):
                problems.append(
                    f"{label}: shape {list(want.shape)}, {model}'s is {list(got.shape)}"
                )
                continue
            for axis, (w, m) in enumerate(zip(want.shape, got.shape, strict=True)):
                if m > 0 and w != m:
                    problems.append(f"{label}: shape[{axis}] is {w}, {model} fixes it to {m}")
    return problems
