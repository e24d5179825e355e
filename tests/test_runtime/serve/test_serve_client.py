"""The OIP v2 client's encoding and decoding, and the load generator against a real server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from kubeaccel_runtime.client import (
    OipDecodeError,
    decode_response,
    encode_request,
    oip_datatype,
)
from kubeaccel_runtime.loadgen import LoadError, LoadSpec, run, summarize
from kubeaccel_runtime.retry import RetryPolicy, retriable_error, retriable_status
from kubeaccel_runtime.serve.app import ServeApp
from kubeaccel_runtime.serve.session import LoadedModel
from serve_fixtures import ServerThread

TENSORS = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.array([[1, -2]], dtype=np.int64),
    "c": np.array([True, False, True]),
    "d": np.array([0.5, -1.25], dtype=np.float16),
    "e": np.array([255, 0], dtype=np.uint8),
}


def as_response(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """Turn an encoded request into the equivalent response (inputs -> outputs)."""
    n = int(headers.get("inference-header-content-length", len(body)))
    doc = json.loads(body[:n])
    raw = json.dumps({"model_name": "m", "outputs": doc["inputs"]}).encode()
    out_headers = dict(headers)
    if "inference-header-content-length" in headers:
        out_headers["inference-header-content-length"] = str(len(raw))
    return raw + body[n:], out_headers


@pytest.mark.parametrize("binary", [True, False])
def test_tensors_round_trip_through_encode_and_decode_for_every_dtype(binary: bool) -> None:
    body, headers = encode_request(TENSORS, binary=binary)
    assert ("inference-header-content-length" in headers) is binary
    out = decode_response(*as_response(body, headers)).outputs
    for name, arr in TENSORS.items():
        np.testing.assert_array_equal(out[name], arr)
        assert out[name].dtype == arr.dtype


def test_requested_outputs_and_binary_output_flags_are_encoded() -> None:
    body, _ = encode_request(TENSORS, binary=False, outputs=["y"], binary_outputs=False)
    doc = json.loads(body)
    assert doc["outputs"] == [{"name": "y", "parameters": {"binary_data": False}}]
    body, _ = encode_request(TENSORS, binary=False, request_id="r")
    assert json.loads(body)["parameters"] == {"binary_data_output": True}
    assert json.loads(body)["id"] == "r"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"outputs": 3}',
        b'{"outputs": [{"name": "y"}]}',
        b'{"outputs": [{"name": "y", "datatype": "STR", "shape": [1], "data": [1]}]}',
    ],
)
def test_malformed_responses_raise_a_decode_error(body: bytes) -> None:
    with pytest.raises(OipDecodeError):
        decode_response(body, {})


def test_a_binary_output_longer_than_the_body_is_a_decode_error() -> None:
    header = json.dumps(
        {
            "outputs": [
                {
                    "name": "y",
                    "datatype": "FP32",
                    "shape": [4],
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    with pytest.raises(OipDecodeError, match="does not fit"):
        decode_response(header + b"\x00" * 8, {"inference-header-content-length": str(len(header))})


def test_unsupported_numpy_dtypes_are_refused() -> None:
    with pytest.raises(ValueError, match="no OIP v2 datatype"):
        oip_datatype(np.dtype("complex64"))


def test_summaries_report_percentiles_and_rates() -> None:
    from collections import Counter

    result = summarize([0.001] * 90 + [0.01] * 10, Counter({200: 99, 400: 1}), 2.0, rows=4)
    assert result.requests == 100
    assert result.errors == 1
    assert result.rps == pytest.approx(49.5)
    assert result.items_per_s == pytest.approx(198)
    assert result.p50_ms == pytest.approx(1.0)
    assert result.p99_ms == pytest.approx(10.0)


@pytest.mark.parametrize(("engine", "binary"), [("raw", True), ("raw", False), ("httpx", True)])
def test_the_load_generator_measures_a_real_server_within_its_request_budget(
    mlp_model: LoadedModel, app_factory: Callable[..., ServeApp], engine: str, binary: bool
) -> None:
    x = np.ones((2, 4), np.float32)
    with ServerThread(app_factory(mlp_model)) as srv:
        spec = LoadSpec(
            url=srv.url,
            model="mlp",
            inputs={"x": x},
            binary=binary,
            concurrency=4,
            requests=60,
            duration_s=20,
            warmup=4,
            engine=engine,  # type: ignore[arg-type]
        )
        result = run(spec)
    assert result.requests == 60
    assert result.errors == 0
    assert result.items_per_s == pytest.approx(result.rps * 2)
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms


def test_the_load_generator_fails_fast_on_a_wrong_model_name(
    mlp_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    with ServerThread(app_factory(mlp_model)) as srv:
        spec = LoadSpec(url=srv.url, model="nope", inputs={"x": np.ones((1, 4), np.float32)})
        with pytest.raises(LoadError, match="HTTP 404"):
            run(spec)


class Unavailable:
    """The app, except that infer calls number `first`..`first + count - 1` answer 503."""

    def __init__(self, app: ServeApp, first: int, count: int) -> None:
        self.app, self.first, self.count, self.calls = app, first, count, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/infer"):
            self.calls += 1
            if self.first <= self.calls < self.first + self.count:
                body = b'{"error": "server is shutting down"}'
                await receive()
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@pytest.mark.parametrize("engine", ["raw", "httpx"])
@pytest.mark.parametrize("retry", [None, RetryPolicy(retries=3, backoff_s=0.001)])
def test_the_load_generator_retries_503s_as_the_retry_contract_says(
    mlp_model: LoadedModel,
    app_factory: Callable[..., ServeApp],
    engine: str,
    retry: RetryPolicy | None,
) -> None:
    # Calls 2-4 fail: the 1st request succeeds, the 2nd needs three retries.
    app = Unavailable(app_factory(mlp_model), first=2, count=3)
    with ServerThread(app) as srv:  # type: ignore[arg-type]
        spec = LoadSpec(
            url=srv.url,
            model="mlp",
            inputs={"x": np.ones((1, 4), np.float32)},
            concurrency=1,
            requests=10,
            duration_s=20,
            warmup=0,
            engine=engine,  # type: ignore[arg-type]
            retry=retry,
        )
        result = run(spec)
    if retry is None:
        assert (result.requests, result.errors, result.retries) == (10, 3, 0)
        assert result.statuses == {200: 7, 503: 3}
    else:
        assert (result.requests, result.errors, result.retries) == (10, 0, 3)
        assert result.statuses == {200: 10}
    assert result.as_dict()["retries"] == result.retries


def test_a_retry_policy_backs_off_exponentially_and_stops() -> None:
    policy = RetryPolicy(retries=3, backoff_s=0.1)
    assert [policy.delay(n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.4])
    assert policy.allows(3) and not policy.allows(4)


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("slow connect"), True),
        (httpx.ReadError("reset"), True),
        (httpx.RemoteProtocolError("closed"), True),
        (ConnectionResetError(), True),
        (httpx.ReadTimeout("slow answer"), False),
        (httpx.PoolTimeout("busy"), False),
        (TimeoutError(), False),
        (ValueError("bug"), False),
    ],
)
def test_only_failures_without_an_answer_are_retried(exc: BaseException, retried: bool) -> None:
    assert retriable_error(exc) is retried


def test_only_503_is_a_retriable_answer() -> None:
    assert [
        code for code in (200, 400, 404, 413, 422, 500, 502, 503) if retriable_status(code)
    ] == [503]


@pytest.mark.parametrize("engine", ["raw", "httpx"])
def test_without_a_first_check_an_unreachable_server_is_counted_not_raised(engine: str) -> None:
    from serve_fixtures import free_port

    spec = LoadSpec(
        url=f"http://127.0.0.1:{free_port()}",
        model="mlp",
        inputs={"x": np.ones((1, 4), np.float32)},
        requests=5,
        duration_s=20,
        warmup=2,
        engine=engine,  # type: ignore[arg-type]
        check_first=False,
        retry=RetryPolicy(retries=1, backoff_s=0.001),
    )
    result = run(spec)
    assert (result.requests, result.errors, result.statuses) == (5, 5, {0: 5})
    assert result.retries == 5  # connection refused is retried once, then counted
