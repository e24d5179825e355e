"""A small Open Inference Protocol v2 client: JSON and binary tensor encoding, sync and async.

Used by the tests, by a shard forwarding to the next one, and by `kubeaccel infer`.
The binary tensor data extension (the one Triton and KServe speak) puts a JSON header
first, its length in the `Inference-Header-Content-Length` HTTP header, then the raw
little-endian bytes of every tensor flagged with `binary_data_size`, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import httpx
import numpy as np
import orjson

HEADER_LENGTH: Final = "inference-header-content-length"
JSON_TYPE: Final = "application/json"
BINARY_TYPE: Final = "application/octet-stream"

# OIP v2 datatype name -> numpy dtype (little-endian, as the binary extension requires).
OIP_TO_NUMPY: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMPY_TO_OIP: Final[dict[np.dtype[Any], str]] = {v: k for k, v in OIP_TO_NUMPY.items()}


class OipError(Exception):
    """An error answer from an OIP v2 server (status code and its `error` message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class OipDecodeError(ValueError):
    """A response that is not a well-formed OIP v2 inference response."""


@dataclass(frozen=True)
class InferResult:
    """A decoded inference response."""

    outputs: dict[str, np.ndarray[Any, Any]]
    model_name: str = ""
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def oip_datatype(dtype: np.dtype[Any]) -> str:
    """OIP v2 datatype name of a numpy dtype (ValueError for unsupported ones)."""
    try:
        return NUMPY_TO_OIP[np.dtype(dtype).newbyteorder("<") if dtype.itemsize > 1 else dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no OIP v2 datatype") from None


def tensor_entry(
    name: str, value: np.ndarray[Any, Any], binary: bool, chunks: list[bytes]
) -> dict[str, Any]:
    """OIP v2 tensor entry of `value`; with `binary` its raw bytes are appended to `chunks`."""
    arr = np.asarray(value)
    entry: dict[str, Any] = {
        "name": name,
        "datatype": oip_datatype(arr.dtype),
        "shape": list(arr.shape),
    }
    if binary:
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        entry["parameters"] = {"binary_data_size": len(raw)}
        chunks.append(raw)
    else:
        # orjson writes NaN/Inf as null: JSON has no such numbers (binary keeps them).
        entry["data"] = np.ascontiguousarray(arr).ravel()
    return entry


def frame(doc: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """Body and headers: the JSON document, then the binary chunks (if any) after it."""
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": JSON_TYPE}
    headers = {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def encode_request(
    inputs: Mapping[str, np.ndarray[Any, Any]],
    *,
    binary: bool = True,
    outputs: Sequence[str] | None = None,
    binary_outputs: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer request; `binary` sends tensors as raw bytes."""
    chunks: list[bytes] = []
    entries = [tensor_entry(name, value, binary, chunks) for name, value in inputs.items()]
    request: dict[str, Any] = {"inputs": entries}
    if request_id is not None:
        request["id"] = request_id
    if outputs is not None:
        request["outputs"] = [
            {"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs
        ]
    elif binary_outputs:
        request["parameters"] = {"binary_data_output": True}
    return frame(request, chunks)


def decode_response(body: bytes, headers: Mapping[str, str]) -> InferResult:
    """Decode an infer response (JSON or binary extension) into numpy arrays."""
    raw_len = headers.get(HEADER_LENGTH) or headers.get("Inference-Header-Content-Length")
    try:
        header_len = int(raw_len) if raw_len is not None else len(body)
        doc = orjson.loads(body[:header_len])
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise OipDecodeError(f"response is not OIP v2 JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise OipDecodeError("response has no 'outputs' list")
    view = memoryview(body)[header_len:]
    offset = 0
    out: dict[str, np.ndarray[Any, Any]] = {}
    for item in doc["outputs"]:
        try:
            name, datatype, shape = item["name"], item["datatype"], tuple(item["shape"])
            dtype = OIP_TO_NUMPY[datatype]
            params = item.get("parameters") or {}
            size = params.get("binary_data_size")
            if size is not None:
                count = int(np.prod(shape, dtype=np.int64))
                if size != count * dtype.itemsize or offset + size > len(view):
                    raise OipDecodeError(f"output {name!r}: binary size {size} does not fit")
                arr = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
                offset += size
            else:
                arr = np.asarray(item["data"], dtype=dtype)
            out[name] = arr.reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, OipDecodeError):
                raise
            raise OipDecodeError(f"malformed output entry: {exc!r}") from None
    return InferResult(
        outputs=out,
        model_name=str(doc.get("model_name", "")),
        model_version=doc.get("model_version"),
        id=doc.get("id"),
        parameters=doc.get("parameters") or {},
    )


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(orjson.loads(response.content).get("error", response.text))
    except (orjson.JSONDecodeError, AttributeError):
        message = response.text[:500]
    raise OipError(response.status_code, message)


def _model_path(name: str, version: str | None) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")


class InferenceClient:
    """Synchronous OIP v2 client over one keep-alive connection pool."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def live(self) -> bool:
        """Whether the server answers /v2/health/live with 200."""
        return self._http.get("/v2/health/live").status_code == 200

    def ready(self, model: str | None = None) -> bool:
        """Server readiness, or one model's readiness when `model` is given."""
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        return self._http.get(path).status_code == 200

    def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """Model metadata (name, versions, platform, inputs, outputs)."""
        response = self._http.get(_model_path(model, version))
        _raise_for_error(response)
        doc: dict[str, Any] = orjson.loads(response.content)
        return doc

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        *,
        binary: bool = True,
        outputs: Sequence[str] | None = None,
        version: str | None = None,
    ) -> InferResult:
        """Run one inference; raises OipError with the server's message on a 4xx/5xx."""
        body, headers = encode_request(
            inputs, binary=binary, outputs=outputs, binary_outputs=binary
        )
        response = self._http.post(
            _model_path(model, version) + "/infer", content=body, headers=headers
        )
        _raise_for_error(response)
        return decode_response(response.content, response.headers)


class AsyncInferenceClient:
    """Asynchronous OIP v2 client (httpx.AsyncClient) with bounded timeouts."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout | float = 30.0,
        max_connections: int = 100,
    ) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def ready(self, model: str | None = None) -> bool:
        """Server readiness, or one model's readiness when `model` is given."""
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        return (await self._http.get(path)).status_code == 200

    async def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """Model metadata (name, versions, platform, inputs, outputs)."""
        response = await self._http.get(_model_path(model, version))
        _raise_for_error(response)
        doc: dict[str, Any] = orjson.loads(response.content)
        return doc

    async def infer_raw(
        self, model: str, body: bytes, headers: Mapping[str, str], version: str | None = None
    ) -> httpx.Response:
        """POST an already encoded infer request; the caller interprets the response."""
        return await self._http.post(
            _model_path(model, version) + "/infer", content=body, headers=dict(headers)
        )

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        *,
        binary: bool = True,
        outputs: Sequence[str] | None = None,
        version: str | None = None,
    ) -> InferResult:
        """Run one inference; raises OipError with the server's message on a 4xx/5xx."""
        body, headers = encode_request(
            inputs, binary=binary, outputs=outputs, binary_outputs=binary
        )
        response = await self.infer_raw(model, body, headers, version)
        _raise_for_error(response)
        return decode_response(response.content, response.headers)
