"""The request contract a model declares, and how a written contract is checked against it.

The optimization Job reads the contract from the model when the spec has none; `kubeaccel
init` writes it into a new spec. Both go through `read_contract`, so a contract that cannot
be put in a spec fails the same way, with the same words, in either place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kubeaccel_api.v1alpha1 import TENSOR_NAME_PATTERN, ModelContract, TensorSpec
from onnx import ModelProto

from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.artifact_manifest import TensorInfo

# Bounds of the API's TensorSpec list and shape (v1alpha1): a contract must fit in a spec.
MAX_TENSORS = 64
MAX_RANK = 8


class ContractUnreadable(ValueError):
    """The model's signature cannot be written as a contract; the message says what to do."""


def _problems(kind: str, infos: Sequence[TensorInfo]) -> list[str]:
    problems: list[str] = []
    if len(infos) > MAX_TENSORS:
        problems.append(
            f"the model has {len(infos)} {kind}s; a contract holds at most {MAX_TENSORS}"
        )
    for info in infos:
        if not re.match(TENSOR_NAME_PATTERN, info.name):
            problems.append(
                f"{kind} {info.name!r}: a contract cannot name it (names match "
                f"{TENSOR_NAME_PATTERN}); re-export the model with other {kind} names"
            )
        if len(info.shape) > MAX_RANK:
            problems.append(
                f"{kind} {info.name!r} has rank {len(info.shape)}; a contract allows at most "
                f"{MAX_RANK} dimensions"
            )
    return problems


def contract_from_infos(
    inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]
) -> ModelContract:
    """A contract from tensor infos (dynamic dimensions stay -1, no value ranges).

    Raises:
        ContractUnreadable: names or ranks a spec cannot hold, or no inputs/outputs at all.
    """
    problems = _problems("input", inputs) + _problems("output", outputs)
    if not inputs:
        problems.append("the model has no inputs; there is nothing a request could carry")
    if not outputs:
        problems.append("the model has no outputs")
    if problems:
        raise ContractUnreadable("; ".join(problems))

    def specs(infos: Sequence[TensorInfo]) -> list[TensorSpec]:
        return [TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in infos]

    return ModelContract(inputs=specs(inputs), outputs=specs(outputs))


def read_contract(model: ModelProto) -> ModelContract:
    """The contract an ONNX model declares.

    Raises:
        ContractUnreadable: a nameless or rankless tensor, an element type outside the API's
            dtypes, or names/ranks a spec cannot hold.
    """
    problems = onnx_io.signature_problems(model)
    if problems:
        raise ContractUnreadable("; ".join(problems))
    try:
        inputs, outputs = onnx_io.model_inputs(model), onnx_io.model_outputs(model)
    except onnx_io.ModelLoadError as exc:
        raise ContractUnreadable(str(exc)) from None
    return contract_from_infos(inputs, outputs)


def contract_problems(
    declared_inputs: Sequence[TensorSpec],
    declared_outputs: Sequence[TensorSpec] | None,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
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
    groups: list[tuple[str, Sequence[TensorSpec], dict[str, TensorInfo]]] = [
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
                problems.append(f"{label}: shape {want.shape}, {model}'s is {got.shape}")
                continue
            for axis, (w, m) in enumerate(zip(want.shape, got.shape, strict=True)):
                if m > 0 and w != m:
                    problems.append(f"{label}: shape[{axis}] is {w}, {model} fixes it to {m}")
    return problems
