"""Every validation rule answers its 4xx with a message naming the input and the expectation."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from kubeaccel_runtime.client import decode_response, encode_request
from kubeaccel_runtime.serve.app import ServeApp
from kubeaccel_runtime.serve.session import LoadedModel

URL = "/v2/models/two/infer"


def valid() -> dict[str, Any]:
    """A correct JSON request for the two-input model (batch 2)."""
    return {
        "id": "ok",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4, 5, 6, 7, 8]},
            {"name": "k", "datatype": "INT64", "shape": [2, 1], "data": [2, 3]},
            {"name": "mask", "datatype": "BOOL", "shape": [2, 4], "data": [True] * 8},
        ],
    }


def arrays(batch: int = 2) -> dict[str, np.ndarray]:
    """Valid numpy inputs for the two-input model."""
    return {
        "x": np.arange(batch * 4, dtype=np.float32).reshape(batch, 4),
        "k": np.full((batch, 1), 2, dtype=np.int64),
        "mask": np.ones((batch, 4), dtype=bool),
    }


def edit(path: str, value: Any) -> dict[str, Any]:
    """valid() with one field replaced; path like 'inputs.0.shape' (value DELETE removes it)."""
    doc = valid()
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return doc


DELETE = object()


@pytest.fixture
async def client(
    two_input_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(two_input_model)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        yield c


async def test_the_valid_request_passes(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json=valid())
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["y"]["data"] == [2, 4, 6, 8, 15, 18, 21, 24]
    assert outputs["flag"]["datatype"] == "BOOL"
    assert outputs["flag"]["data"] == [True] * 8


async def test_whole_numbers_written_as_floats_are_integers(client: httpx.AsyncClient) -> None:
    # JSON Schema counts 2.0 as an integer; schema-driven clients send it that way.
    r = await client.post(URL, json=edit("inputs.1.data", [2.0, 3e0]))
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["y"]["data"] == [2, 4, 6, 8, 15, 18, 21, 24]


async def test_a_string_id_spelling_true_does_not_make_numbers_booleans(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(URL, json=edit("id", "true false"))
    assert r.status_code == 200, r.text


JSON_CASES: list[tuple[str, dict[str, Any] | list[Any], int, list[str]]] = [
    ("the body is a list", [1, 2], 400, ["JSON object"]),
    ("inputs is missing", edit("inputs", DELETE), 400, ["inputs", "required"]),
    ("inputs is empty", edit("inputs", []), 400, ["inputs"]),
    ("an input has no name", edit("inputs.0.name", DELETE), 400, ["inputs.0.name"]),
    ("a shape is not a list", edit("inputs.0.shape", "2x4"), 400, ["inputs.0.shape"]),
    ("a dimension is negative", edit("inputs.0.shape", [-1, 4]), 400, ["inputs.0.shape"]),
    ("a dimension is fractional", edit("inputs.0.shape", [2.5, 4]), 400, ["inputs.0.shape"]),
    ("the id is a number", edit("id", 5), 400, ["id"]),
    ("an input is unknown", edit("inputs.0.name", "z"), 400, ["unknown input 'z'", "x, k, mask"]),
    ("an input is missing", {"inputs": valid()["inputs"][:2]}, 400, ["missing input", "mask"]),
    (
        "an input appears twice",
        {"inputs": [*valid()["inputs"], valid()["inputs"][0]]},
        400,
        ["'x' appears twice"],
    ),
    ("the datatype differs", edit("inputs.0.datatype", "FP64"), 400, ["'x'", "FP64", "FP32"]),
    ("the datatype is unknown", edit("inputs.1.datatype", "BYTES"), 400, ["'k'", "INT64"]),
    ("the rank differs", edit("inputs.0.shape", [8]), 400, ["'x'", "rank 1", "[-1, 4]"]),
    (
        "a fixed dimension differs",
        edit("inputs.0.shape", [4, 2]),
        400,
        ["'x'", "dimension 1 must be 4"],
    ),
    ("a dimension is zero", edit("inputs.0.shape", [0, 4]), 400, ["'x'", "dimension 0 is 0"]),
    (
        "the batch exceeds maxBatch",
        edit("inputs.0.shape", [9, 4]),
        400,
        ["'x'", "batch size 9", "maxBatch 8"],
    ),
    (
        "inputs disagree on the batch",
        edit("inputs.1.shape", [1, 1]),
        400,
        ["'k'", "batch size 1", "2"],
    ),
    (
        "data has too few elements",
        edit("inputs.0.data", [1, 2, 3, 4, 5, 6, 7]),
        400,
        ["'x'", "needs 8 elements", "has 7"],
    ),
    (
        "data is ragged",
        edit("inputs.0.data", [[1, 2, 3, 4], [5, 6, 7]]),
        400,
        ["'x'", "rectangular"],
    ),
    ("data holds strings", edit("inputs.0.data", ["a"] * 8), 400, ["'x'", "numbers", "FP32"]),
    ("data holds booleans for FP32", edit("inputs.0.data", [True] * 8), 400, ["'x'", "numbers"]),
    ("data holds floats for INT64", edit("inputs.1.data", [1.5, 2]), 400, ["'k'", "integers"]),
    ("a boolean among INT64 values", edit("inputs.1.data", [True, 2]), 400, ["'k'", "integers"]),
    (
        "a number among BOOL values",
        edit("inputs.2.data", [0, *[False] * 7]),
        400,
        ["'mask'", "true/false"],
    ),
    (
        "a boolean among FP32 values",
        edit("inputs.0.data", [False, *range(7)]),
        400,
        ["'x'", "numbers", "FP32"],
    ),
    (
        "a whole float beyond INT64",
        edit("inputs.1.data", [9.3e18, 1]),
        400,
        ["'k'", "integers"],
    ),
    ("a whole float above the range", edit("inputs.1.data", [11.0, 1]), 400, ["maximum 10"]),
    ("data holds numbers for BOOL", edit("inputs.2.data", [1] * 8), 400, ["'mask'", "true/false"]),
    ("data is absent", edit("inputs.0.data", DELETE), 400, ["'x'", "no data"]),
    ("data is an object", edit("inputs.0.data", {"a": 1}), 400, ["'x'", "JSON array"]),
    (
        "data is a single number",
        {
            "inputs": [
                *valid()["inputs"][:1],
                {**valid()["inputs"][1], "shape": [2, 1], "data": 2},
                valid()["inputs"][2],
            ]
        },
        400,
        ["'k'", "JSON array", "single value"],
    ),
    (
        "an integer overflows INT64",
        edit("inputs.1.data", [2**70, 1]),
        400,
        ["'k'", "integers"],
    ),
    ("a value is above the range", edit("inputs.1.data", [11, 1]), 400, ["'k'", "maximum 10"]),
    ("a value is below the range", edit("inputs.1.data", [-1, 1]), 400, ["'k'", "minimum 0"]),
    (
        "a float overflows FP32 to Inf",
        edit("inputs.0.data", [1e39] * 8),
        400,
        ["'x'", "NaN or Inf"],
    ),
    (
        "an unknown output is requested",
        edit("outputs", [{"name": "zz"}]),
        400,
        ["unknown output 'zz'", "flag, y"],
    ),
    (
        "an output is requested twice",
        edit("outputs", [{"name": "y"}, {"name": "y"}]),
        400,
        ["'y' is requested twice"],
    ),
    (
        "classification is requested",
        edit("outputs", [{"name": "y", "parameters": {"classification": 2}}]),
        400,
        ["classification"],
    ),
    (
        "binary_data is not a boolean",
        edit("outputs", [{"name": "y", "parameters": {"binary_data": "yes"}}]),
        400,
        ["binary_data", "true or false"],
    ),
    (
        "binary_data_output is not a boolean",
        edit("parameters", {"binary_data_output": 1}),
        400,
        ["binary_data_output"],
    ),
    (
        "a parameter value is an object",
        edit("parameters", {"x": {"y": 1}}),
        400,
        ["parameters"],
    ),
    (
        "data and binary_data_size are both sent",
        edit("inputs.0.parameters", {"binary_data_size": 32}),
        400,
        ["'x'", "not both"],
    ),
]


@pytest.mark.parametrize(
    ("doc", "status", "fragments"),
    [pytest.param(doc, status, frags, id=name) for name, doc, status, frags in JSON_CASES],
)
async def test_a_json_request_breaking_a_rule_gets_a_precise_4xx(
    client: httpx.AsyncClient, doc: Any, status: int, fragments: list[str]
) -> None:
    r = await client.post(
        URL, content=json.dumps(doc), headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    for fragment in fragments:
        assert fragment in error, (fragment, error)


async def test_invalid_json_is_a_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        URL, content=b'{"inputs": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]


def binary_request(
    tensors: dict[str, np.ndarray], mutate: Callable[[dict[str, Any], bytes], tuple[Any, bytes]]
) -> tuple[bytes, dict[str, str]]:
    """A binary request whose JSON header and payload `mutate` may change."""
    body, headers = encode_request(tensors, binary=True)
    n = int(headers["inference-header-content-length"])
    header, payload = json.loads(body[:n]), body[n:]
    header, payload = mutate(header, payload)
    raw = json.dumps(header).encode()
    return raw + payload, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(raw)),
    }


def _set_size(index: int, size: Any) -> Callable[[dict[str, Any], bytes], tuple[Any, bytes]]:
    def mutate(h: dict[str, Any], p: bytes) -> tuple[Any, bytes]:
        h["inputs"][index]["parameters"]["binary_data_size"] = size
        return h, p

    return mutate


def _nan_in_x(h: dict[str, Any], p: bytes) -> tuple[Any, bytes]:
    x = np.frombuffer(p[:32], dtype=np.float32).copy()
    x[3] = np.nan
    return h, x.tobytes() + p[32:]


def _bool_byte(h: dict[str, Any], p: bytes) -> tuple[Any, bytes]:
    return h, p[:-1] + b"\x02"


BINARY_CASES = [
    ("binary_data_size disagrees with the shape", _set_size(0, 28), ["'x'", "28 bytes", "32"]),
    ("binary_data_size is a string", _set_size(0, "32"), ["'x'", "non-negative integer"]),
    ("binary_data_size is negative", _set_size(0, -1), ["'x'", "non-negative integer"]),
    ("the payload is truncated", lambda h, p: (h, p[:-3]), ["'mask'", "ends after"]),
    ("the payload has trailing bytes", lambda h, p: (h, p + b"xx"), ["binary data is", "declare"]),
    ("an FP32 value is NaN", _nan_in_x, ["'x'", "NaN or Inf", "index 3"]),
    ("a BOOL byte is not 0 or 1", _bool_byte, ["'mask'", "0 or 1"]),
]


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [pytest.param(m, f, id=name) for name, m, f in BINARY_CASES],
)
async def test_a_binary_request_breaking_a_rule_gets_a_precise_400(
    client: httpx.AsyncClient,
    mutate: Callable[[dict[str, Any], bytes], tuple[Any, bytes]],
    fragments: list[str],
) -> None:
    body, headers = binary_request(arrays(), mutate)
    r = await client.post(URL, content=body, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    for fragment in fragments:
        assert fragment in error, (fragment, error)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("abc", "must be an integer"), ("0", "between 1"), ("999999", "between 1")],
)
async def test_a_bad_inference_header_length_is_a_400(
    client: httpx.AsyncClient, value: str, fragment: str
) -> None:
    body, headers = encode_request(arrays(), binary=True)
    headers["inference-header-content-length"] = value
    r = await client.post(URL, content=body, headers=headers)
    assert r.status_code == 400
    assert fragment in r.json()["error"]


async def test_a_body_over_the_cap_is_refused_by_content_length(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, content=b"x" * 5000, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "4096" in r.json()["error"]


async def test_a_streamed_body_over_the_cap_is_refused_while_reading(
    client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):  # 100 KiB offered, far above the 4 KiB cap
            sent += 1
            yield b" " * 1024

    r = await client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "maxRequestBytes 4096" in r.json()["error"]
    assert sent < 10  # stopped reading early instead of buffering everything


async def test_json_with_far_more_values_than_the_contract_allows_is_refused_before_parsing(
    client: httpx.AsyncClient,
) -> None:
    # 3.6 KB, under the 4 KiB cap, but ~1800 values where the contract allows 8 * 9 = 72.
    doc = valid()
    doc["inputs"][0]["data"] = [0] * 1800
    r = await client.post(URL, content=json.dumps(doc, separators=(",", ":")))
    assert r.status_code == 413
    assert "allows at most 72" in r.json()["error"]


async def test_a_compressed_body_is_a_415(client: httpx.AsyncClient) -> None:
    r = await client.post(
        URL,
        content=b"\x1f\x8b",
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert r.status_code == 415
    assert "gzip" in r.json()["error"]


async def test_binary_and_json_requests_give_identical_outputs_for_every_dtype(
    client: httpx.AsyncClient,
) -> None:
    tensors = arrays(3)
    tensors["mask"][1, 2] = False
    results = []
    for binary in (True, False):
        body, headers = encode_request(tensors, binary=binary, binary_outputs=binary)
        r = await client.post(URL, content=body, headers=headers)
        assert r.status_code == 200, r.text
        results.append(decode_response(r.content, r.headers).outputs)
    for name in ("y", "flag"):
        np.testing.assert_array_equal(results[0][name], results[1][name])
        assert results[0][name].dtype == results[1][name].dtype
    assert not results[0]["flag"][1, 2]


async def test_rejections_are_counted_by_reason(
    client: httpx.AsyncClient,
) -> None:
    await client.post(URL, json=edit("inputs.0.shape", [9, 4]))
    await client.post(URL, json=edit("inputs.1.data", [11, 1]))
    text = (await client.get("/metrics")).text
    assert 'kubeaccel_validation_failures_total{reason="batch"} 1.0' in text
    assert 'kubeaccel_validation_failures_total{reason="range"} 1.0' in text


async def test_one_bad_request_does_not_change_the_next_good_one(client: httpx.AsyncClient) -> None:
    good = (await client.post(URL, json=valid())).json()
    bad = copy.deepcopy(valid())
    bad["inputs"][0]["data"] = [9.0] * 7
    assert (await client.post(URL, json=bad)).status_code == 400
    again = (await client.post(URL, json=valid())).json()
    assert good == again


def test_a_real_server_refuses_an_oversized_body_without_reading_it(
    two_input_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    import socket

    from serve_fixtures import ServerThread

    with (
        ServerThread(app_factory(two_input_model)) as srv,
        socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock,
    ):
        head = (
            f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10**9}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"{" * 1000)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes: recv returns b"" at the end
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"maxRequestBytes 4096" in answer
    assert b"connection: close" in answer.lower()
