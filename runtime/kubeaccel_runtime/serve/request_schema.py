"""JSON Schema of one served model's infer request, from the contract the server enforces.

The generic OIP schema accepts any tensor; this one names the model's inputs, their
datatypes, shapes and value ranges, so that every request valid by the schema is accepted
(a schema-driven fuzzer relies on it). JSON Schema cannot tie a tensor's element count to
its shape, so batch sizes are enumerated: one alternative per batch size, each fixing
every input's shape and data length. The enumeration stops at BATCH_ALTERNATIVES; larger
batches up to limits.maxBatch are still accepted and named in the description.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
from kubeaccel_api.v1alpha1 import DType

from kubeaccel_runtime.serve.contract import Contract, TensorRule
from kubeaccel_runtime.serve.dtypes import NUMPY, is_int

# limits.maxBatch defaults to 64: the document is exact for the default limits.
BATCH_ALTERNATIVES: Final = 64
MAX_DIM: Final = 2**31 - 1
_SCALAR: Final = {"type": ["boolean", "integer", "number", "string"]}


def _bounds(rule: TensorRule) -> tuple[float | int | None, float | int | None]:
    """The tightest of the datatype's finite range and the declared range."""
    if is_int(rule.dtype):
        info = np.iinfo(NUMPY[rule.dtype])
        low: float | int = int(info.min)
        high: float | int = int(info.max)
    elif rule.dtype is DType.FLOAT64:
        return rule.min, rule.max  # JSON numbers are doubles already
    else:  # a larger finite double would become Inf and be refused as non-finite
        finfo = np.finfo(NUMPY[rule.dtype])
        low, high = float(finfo.min), float(finfo.max)
    if rule.min is not None:
        low = max(low, math.ceil(rule.min) if is_int(rule.dtype) else rule.min)
    if rule.max is not None:
        high = min(high, math.floor(rule.max) if is_int(rule.dtype) else rule.max)
    return low, high


def value_schema(rule: TensorRule) -> dict[str, Any]:
    """One element of the tensor's JSON `data`."""
    if rule.dtype is DType.BOOL:
        return {"type": "boolean"}
    schema: dict[str, Any] = {"type": "integer" if is_int(rule.dtype) else "number"}
    low, high = _bounds(rule)
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    return schema


def _shape_and_data(rule: TensorRule, batch: int) -> dict[str, Any]:
    dims = [batch if axis == 0 and rule.batched else d for axis, d in enumerate(rule.shape)]
    data: dict[str, Any] = {"type": "array", "items": value_schema(rule)}
    if -1 in dims:  # a dynamic non-batch dim: only the rank is known
        shape: dict[str, Any] = {
            "type": "array",
            "prefixItems": [
                {"const": d} if d != -1 else {"type": "integer", "minimum": 1, "maximum": MAX_DIM}
                for d in dims
            ],
            "minItems": len(dims),
            "maxItems": len(dims),
        }
    else:
        shape = {"const": dims}
        data["minItems"] = data["maxItems"] = math.prod(dims)
    return {"shape": shape, "data": data}


def input_schema(rule: TensorRule, batch: int) -> dict[str, Any]:
    """One element of `inputs` for a request of `batch` rows."""
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"const": rule.name},
            "datatype": {"const": rule.datatype},
            **_shape_and_data(rule, batch),
            # binary_data_size announces binary data, which a JSON body does not carry.
            "parameters": {
                "type": ["object", "null"],
                "propertyNames": {"not": {"const": "binary_data_size"}},
                "additionalProperties": _SCALAR,
            },
        },
    }


def _outputs_schema(outputs: tuple[TensorRule, ...]) -> dict[str, Any]:
    items = [
        {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"const": rule.name},
                "parameters": {
                    "type": ["object", "null"],
                    "properties": {"binary_data": {"type": "boolean"}},
                    "propertyNames": {"not": {"const": "classification"}},
                    "additionalProperties": _SCALAR,
                },
            },
        }
        for rule in outputs
    ]
    return {
        "description": (
            "Outputs to return (absent or null: all). Any subset in any order is accepted, "
            "each at most once; the schema lists them in the model's order."
        ),
        "type": ["array", "null"],
        "prefixItems": items,
        "items": False,
        "maxItems": len(items),
    }


def batch_sizes(contract: Contract) -> list[int]:
    """The batch sizes the schema enumerates ([1] when no input has a batch dimension)."""
    if not any(rule.batched for rule in contract.inputs):
        return [1]
    return list(range(1, min(contract.max_batch, BATCH_ALTERNATIVES) + 1))


def request_schema(contract: Contract, outputs: tuple[TensorRule, ...]) -> dict[str, Any]:
    """The infer request body (JSON) this model accepts."""
    alternatives = [
        {
            "type": "array",
            "prefixItems": [input_schema(rule, batch) for rule in contract.inputs],
            "items": False,
            "minItems": len(contract.inputs),
        }
        for batch in batch_sizes(contract)
    ]
    inputs = ", ".join(f"{r.name} {r.datatype}{r.shape_text()}" for r in contract.inputs)
    return {
        "title": "InferenceRequest",
        "description": (
            f"Infer request of this model: inputs {inputs} (-1: dynamic), every input once, "
            "in any order (the schema lists them in the model's order); batch size at most "
            f"limits.maxBatch {contract.max_batch}; body at most limits.maxRequestBytes "
            f"{contract.max_request_bytes} bytes."
        ),
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": ["string", "null"], "maxLength": 256},
            "parameters": {
                "type": ["object", "null"],
                "properties": {"binary_data_output": {"type": "boolean"}},
                "additionalProperties": _SCALAR,
            },
            "inputs": alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives},
            "outputs": _outputs_schema(outputs),
        },
        "x-max-batch": contract.max_batch,
        "x-max-request-bytes": contract.max_request_bytes,
    }
