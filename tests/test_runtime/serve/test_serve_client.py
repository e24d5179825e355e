"""The OIP v2 client's encoding and decoding, and the load generator against a real server."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from kubeaccel_runtime.client import (
    OipDecodeError,
    decode_response,
    encode_request,
    oip_datatype,
)
from kubeaccel_runtime.loadgen import LoadError, LoadSpec, run, summarize
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
