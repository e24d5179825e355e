"""Turn an infer request body into checked numpy inputs, or a precise InvalidRequest.

Everything here runs before the model: the JSON envelope (pydantic), then per input its
name, datatype, shape (rank, fixed dims, batch limit), element count against the data,
binary byte sizes, NaN/Inf and the declared value range. Conversion is numpy-only
(`np.asarray` on the parsed lists, `np.frombuffer` on binary data): no per-element
Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from kubeaccel_api.v1alpha1 import DType
from pydantic import ValidationError

from kubeaccel_runtime.serve.contract import Contract, TensorRule
from kubeaccel_runtime.serve.dtypes import FROM_OIP, NUMPY, is_float, is_int
from kubeaccel_runtime.serve.errors import InvalidRequest, PayloadTooLarge
from kubeaccel_runtime.serve.schemas import InferenceRequest, Parameters, RequestInput

Array = np.ndarray[Any, Any]

# numpy kinds accepted from JSON numbers per target type (bool is never a number).
_FLOAT_KINDS = frozenset("iuf")
_INT_KINDS = frozenset("iu")


@dataclass(frozen=True)
class RequestedOutput:
    """One output to return and whether it goes out as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True)
class DecodedRequest:
    """A request that passed every check: inputs in the model's order, outputs to return."""

    id: str | None
    inputs: dict[str, Array]
    outputs: tuple[RequestedOutput, ...]
    batch: int
    # Inputs' dtypes and non-batch dims: only requests with equal keys are batched together.
    signature: tuple[tuple[str, str, tuple[int, ...]], ...]


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The Inference-Header-Content-Length value, checked against the body size."""
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        raise InvalidRequest(
            f"Inference-Header-Content-Length must be an integer, got {value[:40]!r}",
            reason="header",
        ) from None
    if not 0 < length <= body_length:
        raise InvalidRequest(
            f"Inference-Header-Content-Length {length} must be between 1 and the body size "
            f"{body_length}",
            reason="header",
        )
    return length


def _bound_values(raw: bytes, limit: int | None) -> None:
    """Refuse JSON holding far more numbers than the contract allows, before parsing it.

    Parsing turns every number into a Python object (~30 bytes from ~2 bytes of JSON), so
    a body within maxRequestBytes could still cost hundreds of MB; counting commas (C
    speed) bounds the values a request can hold.
    """
    if limit is None:
        return
    separators = raw.count(b",")
    # Slack for the envelope's own commas (names, shapes, parameters).
    if separators > limit + 1024:
        raise PayloadTooLarge(
            f"request holds about {separators + 1} values; the input contract allows at most "
            f"{limit} (limits.maxBatch times the input sizes)",
            reason="too_many_values",
        )


def _envelope(raw: bytes) -> InferenceRequest:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", reason="json") from None
    if not isinstance(doc, dict):
        raise InvalidRequest(
            'request body must be a JSON object with an "inputs" list', reason="json"
        )
    try:
        return InferenceRequest.model_validate(doc)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc), reason="schema") from None


_UNION_TAGS = frozenset({"bool", "int", "float", "str"})


def _describe(exc: ValidationError) -> str:
    """The first few schema errors as `field.path: problem` (parameter unions folded)."""
    seen: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"]
        if (
            len(loc) >= 2
            and loc[0] in ("parameters", "inputs", "outputs")
            and loc[-1] in _UNION_TAGS
        ):
            loc, msg = loc[:-1], "parameter values must be a boolean, number or string"
        seen.setdefault(".".join(loc) or "request", msg)
    parts = [f"{loc}: {msg}" for loc, msg in list(seen.items())[:3]]
    more = len(seen) - len(parts)
    return "invalid inference request: " + "; ".join(parts) + (f" (+{more} more)" if more else "")


def _flag(params: Parameters | None, key: str, where: str) -> bool | None:
    if not params or key not in params:
        return None
    value = params[key]
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}: parameter {key!r} must be true or false", reason="schema")
    return value


def _check_shape(item: RequestInput, rule: TensorRule, max_batch: int) -> tuple[int, ...]:
    shape = tuple(item.shape)
    where = f"input {rule.name!r}"
    if len(shape) != len(rule.shape):
        raise InvalidRequest(
            f"{where}: shape {list(shape)} has rank {len(shape)}, expected rank "
            f"{len(rule.shape)} {rule.shape_text()}",
            reason="shape",
        )
    for axis, (got, want) in enumerate(zip(shape, rule.shape, strict=True)):
        if got == 0:
            raise InvalidRequest(
                f"{where}: dimension {axis} is 0; every dimension must be at least 1",
                reason="shape",
            )
        if want != -1 and got != want:
            raise InvalidRequest(
                f"{where}: shape {list(shape)} does not match {rule.shape_text()} "
                f"(dimension {axis} must be {want})",
                reason="shape",
            )
    if rule.batched and shape[0] > max_batch:
        raise InvalidRequest(
            f"{where}: batch size {shape[0]} exceeds limits.maxBatch {max_batch}",
            reason="batch",
        )
    return shape


def _from_binary(
    item: RequestInput,
    rule: TensorRule,
    shape: tuple[int, ...],
    size: object,
    binary: memoryview,
    offset: int,
) -> tuple[Array, int]:
    where = f"input {rule.name!r}"
    if item.data is not None:
        raise InvalidRequest(
            f"{where}: send either data or binary_data_size, not both", reason="binary"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidRequest(
            f"{where}: binary_data_size must be a non-negative integer", reason="binary"
        )
    dtype = NUMPY[rule.dtype]
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if size != expected:
        raise InvalidRequest(
            f"{where}: binary_data_size is {size} bytes, but shape {list(shape)} of "
            f"{rule.datatype} needs {expected} bytes",
            reason="binary",
        )
    if offset + size > len(binary):
        raise InvalidRequest(
            f"{where}: binary data ends after {len(binary) - offset} of its {size} bytes",
            reason="binary",
        )
    arr = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
    if rule.dtype is DType.BOOL and count and int(arr.view(np.uint8).max()) > 1:
        raise InvalidRequest(f"{where}: BOOL bytes must be 0 or 1", reason="value")
    if not dtype.isnative:  # pragma: no cover - big-endian hosts only
        arr = arr.astype(dtype)
    return arr.reshape(shape), offset + size


def _from_json(
    item: RequestInput, rule: TensorRule, shape: tuple[int, ...], may_hold_bools: bool
) -> Array:
    where = f"input {rule.name!r}"
    if item.data is None:
        raise InvalidRequest(
            f'{where}: no data (send "data" or parameters.binary_data_size)', reason="data"
        )
    if not isinstance(item.data, list):  # OIP: an array, flat or nested; never a bare value
        raise InvalidRequest(
            f"{where}: data must be a JSON array (flat or nested), not a single value",
            reason="data",
        )
    try:
        raw = np.asarray(item.data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidRequest(
            f"{where}: data is not a rectangular array of numbers", reason="data"
        ) from None
    if is_int(rule.dtype) and raw.dtype.kind == "f":
        raw = _whole_numbers(raw, rule)
    kind = raw.dtype.kind
    ok_kinds = _FLOAT_KINDS if is_float(rule.dtype) else _INT_KINDS if is_int(rule.dtype) else {"b"}
    # numpy turns [true, 2] into [1, 2]: numbers mixed with true/false fit no datatype.
    if kind in _FLOAT_KINDS and may_hold_bools and _holds_bool(item.data):
        kind = "O"
    if kind not in ok_kinds:
        wanted = (
            "true/false values"
            if rule.dtype is DType.BOOL
            else ("integers" if is_int(rule.dtype) else "numbers")
        )
        raise InvalidRequest(f"{where}: data must be {wanted} for {rule.datatype}", reason="dtype")
    count = math.prod(shape)
    if raw.size != count:
        raise InvalidRequest(
            f"{where}: shape {list(shape)} needs {count} elements, data has {raw.size}",
            reason="count",
        )
    target = NUMPY[rule.dtype]
    if is_int(rule.dtype) and raw.size:
        info = np.iinfo(target)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < info.min or hi > info.max:
            raise InvalidRequest(
                f"{where}: values must fit {rule.datatype} ({info.min}..{info.max}), "
                f"got {lo if lo < info.min else hi}",
                reason="value",
            )
    with np.errstate(over="ignore"):  # overflow to Inf is reported by the NaN/Inf check
        return raw.astype(target, copy=False).reshape(shape)


def _holds_bool(data: Any) -> bool:
    """Whether nested lists `data` hold a bool (a C-level scan of the elements' types)."""
    return bool in set(map(type, np.asarray(data, dtype=object).ravel()))


def _whole_numbers(raw: Array, rule: TensorRule) -> Array:
    """Numbers written with a fraction or exponent (2.0, 1e3) for an integer input, as int64.

    JSON Schema counts 2.0 as an integer, so schema-driven clients may send it. Values that
    are not whole, or outside int64, stay floats and are refused as not integers below.
    """
    # 2**63 is exact as a double; int64 holds [-2**63, 2**63).
    limit = float(2**63)
    if not (np.isfinite(raw).all() and (raw == np.trunc(raw)).all()):
        return raw
    if raw.size and (raw.min() < -limit or raw.max() >= limit):
        return raw
    return raw.astype(np.int64)


def check_values(name: str, arr: Array, rule: TensorRule) -> None:
    """NaN/Inf and declared range checks of one input (InvalidRequest on a violation)."""
    where = f"input {name!r}"
    if not arr.size:
        return
    if rule.reject_non_finite and is_float(rule.dtype) and not np.isfinite(arr).all():
        index = int(np.flatnonzero(~np.isfinite(arr.ravel()))[0])
        raise InvalidRequest(
            f"{where}: contains NaN or Inf (first at flat index {index}); only finite "
            f"values are accepted",
            reason="non_finite",
        )
    if rule.min is not None:
        low = arr.min()
        if low < rule.min:
            raise InvalidRequest(
                f"{where}: value {low.item()} is below the allowed minimum {rule.min}",
                reason="range",
            )
    if rule.max is not None:
        high = arr.max()
        if high > rule.max:
            raise InvalidRequest(
                f"{where}: value {high.item()} is above the allowed maximum {rule.max}",
                reason="range",
            )


def _requested_outputs(
    req: InferenceRequest, available: tuple[TensorRule, ...]
) -> tuple[RequestedOutput, ...]:
    default_binary = bool(_flag(req.parameters, "binary_data_output", "request"))
    if req.outputs is None:
        return tuple(RequestedOutput(r.name, default_binary) for r in available)
    names = {r.name for r in available}
    seen: set[str] = set()
    chosen = []
    for out in req.outputs:
        if out.name not in names:
            raise InvalidRequest(
                f"unknown output {out.name!r}; this model returns: {', '.join(sorted(names))}",
                reason="name",
            )
        if out.name in seen:
            raise InvalidRequest(f"output {out.name!r} is requested twice", reason="name")
        if out.parameters and "classification" in out.parameters:
            raise InvalidRequest(
                f"output {out.name!r}: the classification extension is not supported",
                reason="schema",
            )
        seen.add(out.name)
        flag = _flag(out.parameters, "binary_data", f"output {out.name!r}")
        chosen.append(RequestedOutput(out.name, default_binary if flag is None else flag))
    return tuple(chosen)


def decode_request(
    body: bytes, header_length: int | None, contract: Contract, outputs: tuple[TensorRule, ...]
) -> DecodedRequest:
    """Parse and check one infer request against `contract`; `outputs` are the returnable ones."""
    # A pure-JSON body is used as is; a binary request's JSON header is small to copy.
    header = body if header_length is None else body[:header_length]
    _bound_values(header, contract.max_input_values)
    req = _envelope(header)
    binary = memoryview(body)[len(header) :]
    # Searching the bytes is cheap; only bodies with a true/false anywhere get the type scan.
    may_hold_bools = b"true" in header or b"false" in header

    by_name: dict[str, RequestInput] = {}
    for item in req.inputs:
        if item.name in by_name:
            raise InvalidRequest(f"input {item.name!r} appears twice", reason="name")
        if contract.input(item.name) is None:
            expected = ", ".join(r.name for r in contract.inputs)
            raise InvalidRequest(
                f"unknown input {item.name!r}; expected inputs: {expected}", reason="name"
            )
        by_name[item.name] = item
    missing = [r.name for r in contract.inputs if r.name not in by_name]
    if missing:
        raise InvalidRequest(f"missing input(s): {', '.join(missing)}", reason="name")

    # Binary chunks follow the JSON header in the order the inputs are listed.
    arrays: dict[str, Array] = {}
    offset = 0
    batch: int | None = None
    for item in req.inputs:
        rule = contract.input(item.name)
        assert rule is not None
        want = FROM_OIP.get(item.datatype)
        if want != rule.dtype:
            raise InvalidRequest(
                f"input {rule.name!r}: datatype {item.datatype[:16]!r} does not match the "
                f"contract, expected {rule.datatype}",
                reason="dtype",
            )
        shape = _check_shape(item, rule, contract.max_batch)
        if rule.batched:
            if batch is not None and shape[0] != batch:
                raise InvalidRequest(
                    f"input {rule.name!r}: batch size {shape[0]} differs from the other "
                    f"inputs' {batch}",
                    reason="batch",
                )
            batch = shape[0]
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            arr, offset = _from_binary(item, rule, shape, size, binary, offset)
        else:
            arr = _from_json(item, rule, shape, may_hold_bools)
        check_values(rule.name, arr, rule)
        arrays[rule.name] = arr
    if offset != len(binary):
        raise InvalidRequest(
            f"binary data is {len(binary)} bytes but the inputs declare {offset}",
            reason="binary",
        )
    ordered = {r.name: arrays[r.name] for r in contract.inputs}
    signature = tuple((n, a.dtype.str, a.shape[1:]) for n, a in ordered.items())
    return DecodedRequest(
        id=req.id,
        inputs=ordered,
        outputs=_requested_outputs(req, outputs),
        batch=batch if batch is not None else 1,
        signature=signature,
    )
