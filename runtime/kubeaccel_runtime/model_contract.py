"""The request contract a model declares, read from an ONNX model.

The optimization Job reads the contract from the model when the spec has none; `kubeaccel
init` writes it into a new spec. Both go through `read_contract`, so a contract that cannot
be put in a spec fails the same way, with the same words, in either place. How a written
contract is checked against a model is kubeaccel_api.contract (the operator uses it too).
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
