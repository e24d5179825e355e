"""Encode infer responses: JSON tensors, or the binary tensor data extension."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kubeaccel_runtime.client import frame, tensor_entry
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
    chunks: list[bytes] = []
    # ascontiguousarray first: a 0-d output goes out with shape [1], as it always has.
    entries = [
        tensor_entry(want.name, np.ascontiguousarray(outputs[want.name]), want.binary, chunks)
        for want in requested
    ]
    doc: dict[str, Any] = {"model_name": model_name, "outputs": entries}
    if model_version is not None:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    return frame(doc, chunks)
