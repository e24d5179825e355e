"""Encode infer responses: JSON tensors, or the binary tensor data extension."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from kubeaccel_runtime.client import BINARY_TYPE, JSON_TYPE, oip_datatype
from kubeaccel_runtime.serve.validation import RequestedOutput

Array = np.ndarray[Any, Any]


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, Array],
    requested: Sequence[RequestedOutput],
) -> tuple[bytes, dict[str, str]]:
    """Body and extra headers of an infer response, in the order of `requested`."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for want in requested:
        arr = np.ascontiguousarray(outputs[want.name])
        entry: dict[str, Any] = {
            "name": want.name,
            "datatype": oip_datatype(arr.dtype),
            "shape": list(arr.shape),
        }
        if want.binary:
            raw = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            # orjson writes NaN/Inf as null: JSON has no such numbers (binary keeps them).
            entry["data"] = arr.ravel()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "outputs": entries}
    if model_version is not None:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": JSON_TYPE}
    return b"".join([header, *chunks]), {
        "content-type": BINARY_TYPE,
        "inference-header-content-length": str(len(header)),
    }
