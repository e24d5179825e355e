"""Property tests: random malformed requests never get a 5xx and never crash the server."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubeaccel_runtime.client import encode_request
from kubeaccel_runtime.serve.app import ServeApp, create_app
from kubeaccel_runtime.serve.session import LoadedModel
from serve_fixtures import ServerThread

URL = "/v2/models/two/infer"
ALLOWED = {200, 400, 404, 405, 413, 415, 422}
ASCII = st.characters(min_codepoint=32, max_codepoint=126)

VALID: dict[str, Any] = {
    "id": "p",
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4, 5, 6, 7, 8]},
        {"name": "k", "datatype": "INT64", "shape": [2, 1], "data": [2, 3]},
        {"name": "mask", "datatype": "BOOL", "shape": [2, 4], "data": [True] * 8},
    ],
    "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    "parameters": {"binary_data_output": False},
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


VALID_PATHS = paths(VALID)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """VALID with 1-3 fields replaced, deleted or added."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(VALID_PATHS))
        parent: Any = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            op = draw(st.sampled_from(["replace", "delete", "add"]))
            if op == "replace":
                parent[path[-1]] = draw(json_values)
            elif op == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(json_values)
            elif isinstance(parent, list):
                parent.append(draw(json_values))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or retyped this path
    return json.dumps(doc).encode()


@st.composite
def fuzzed_tensors(draw: st.DrawFn) -> bytes:
    """Well-formed envelope, random shapes/datatypes/data for every input."""
    dims = st.integers(min_value=-2, max_value=10)
    numbers = st.integers(-300, 300) | st.floats(-1e40, 1e40) | st.booleans()
    data = st.recursive(numbers, lambda inner: st.lists(inner, max_size=10), max_leaves=40)
    inputs = []
    for name in draw(st.lists(st.sampled_from(["x", "k", "mask", "zz"]), min_size=1, max_size=4)):
        inputs.append(
            {
                "name": name,
                "datatype": draw(st.sampled_from(["FP32", "INT64", "BOOL", "FP16", "BYTES", "x"])),
                "shape": draw(st.lists(dims, max_size=4)),
                "data": draw(data),
            }
        )
    return json.dumps({"inputs": inputs}).encode()


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Binary extension requests with random sizes, shapes, payloads and header lengths."""
    arrays = {
        "x": np.ones((2, 4), np.float32),
        "k": np.ones((2, 1), np.int64),
        "mask": np.ones((2, 4), bool),
    }
    body, headers = encode_request(arrays, binary=True)
    n = int(headers["inference-header-content-length"])
    header = json.loads(body[:n])
    for item in header["inputs"]:
        if draw(st.booleans()):
            item["parameters"]["binary_data_size"] = draw(
                st.integers(-10, 200) | st.text(max_size=4) | st.none()
            )
        if draw(st.booleans()):
            item["shape"] = draw(st.lists(st.integers(0, 6), max_size=3))
    raw = json.dumps(header).encode()
    payload = draw(st.binary(max_size=200)) if draw(st.booleans()) else body[n:]
    length = draw(
        st.one_of(
            st.just(str(len(raw))),
            st.integers(-5, len(raw) + 300).map(str),
            st.text(ASCII, max_size=4),
        )
    )
    return raw + payload, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": length,
    }


class Harness:
    """One event loop and in-process client shared by every hypothesis example."""

    def __init__(self, model: LoadedModel) -> None:
        self.loop = asyncio.new_event_loop()
        self.app: ServeApp = create_app(model)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://t"
        )

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(URL, content=body, headers=headers))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.app.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def harness(two_input_model: LoadedModel) -> Iterator[Harness]:
    h = Harness(two_input_model)
    yield h
    h.close()


def check(r: httpx.Response) -> None:
    assert r.status_code in ALLOWED, (r.status_code, r.text)
    if r.status_code != 200:
        error = r.json()["error"]
        assert isinstance(error, str) and error


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(body=json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_json_bodies_never_get_a_5xx(harness: Harness, body: bytes) -> None:
    check(harness.post(body, {"content-type": "application/json"}))


@FAST
@given(body=mutated_requests())
def test_mutated_valid_requests_never_get_a_5xx(harness: Harness, body: bytes) -> None:
    check(harness.post(body, {"content-type": "application/json"}))


@FAST
@given(body=fuzzed_tensors())
def test_random_shapes_datatypes_and_data_never_get_a_5xx(harness: Harness, body: bytes) -> None:
    check(harness.post(body, {"content-type": "application/json"}))


@FAST
@given(request=binary_requests())
def test_malformed_binary_requests_never_get_a_5xx(
    harness: Harness, request: tuple[bytes, dict[str, str]]
) -> None:
    check(harness.post(*request))


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=600))
def test_random_bytes_never_get_a_5xx(harness: Harness, body: bytes) -> None:
    check(harness.post(body))


def test_the_server_still_answers_correctly_after_the_fuzzing(harness: Harness) -> None:
    r = harness.post(json.dumps(VALID).encode())
    assert r.status_code == 200
    assert r.json()["outputs"][0]["data"] == [2, 4, 6, 8, 15, 18, 21, 24]
    metrics = harness.loop.run_until_complete(harness.client.get("/metrics")).text
    assert 'code="500"' not in metrics


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=mutated_requests() | fuzzed_tensors())
def test_a_real_server_survives_malformed_requests(real_server: ServerThread, body: bytes) -> None:
    r = httpx.post(real_server.url + URL, content=body, timeout=10)
    check(r)
    assert real_server.thread.is_alive()


@pytest.fixture(scope="module")
def real_server(two_input_model: LoadedModel) -> Iterator[ServerThread]:
    with ServerThread(create_app(two_input_model)) as srv:
        yield srv
