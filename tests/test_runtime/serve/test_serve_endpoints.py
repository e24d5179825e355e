"""Every endpoint of the OIP v2 server, in-process (ASGI) and on a real loopback server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from kubeaccel_runtime.client import InferenceClient, decode_response, encode_request
from kubeaccel_runtime.serve.app import ModelSlot, ServeApp, ServeSettings
from kubeaccel_runtime.serve.openapi import build_openapi, render
from kubeaccel_runtime.serve.session import LoadedModel
from serve_fixtures import ServerThread

REPO = Path(__file__).resolve().parents[3]
X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)


def reference(artifact: Path, x: np.ndarray) -> np.ndarray:
    """The MLP run directly by onnxruntime."""
    sess = ort.InferenceSession(str(artifact / "shard-0.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": x})[0]  # type: ignore[no-any-return]


@pytest.fixture
async def client(
    mlp_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory(mlp_model)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_server_metadata_names_the_binary_extension(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2")
    assert r.status_code == 200
    doc = r.json()
    assert doc["name"] == "kubeaccel"
    assert "binary_tensor_data" in doc["extensions"]


async def test_live_and_ready_answer_200_once_the_model_is_loaded(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2/models/mlp/ready")).status_code == 200


async def test_model_metadata_lists_the_contract(
    client: httpx.AsyncClient, mlp_model: LoadedModel
) -> None:
    r = await client.get("/v2/models/mlp")
    assert r.status_code == 200
    doc = r.json()
    assert doc["name"] == "mlp"
    assert doc["versions"] == [mlp_model.version]
    assert doc["platform"] == "onnxruntime_onnx"
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert doc["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]


async def test_versioned_paths_accept_the_artifact_version_and_reject_others(
    client: httpx.AsyncClient, mlp_model: LoadedModel
) -> None:
    v = mlp_model.version
    assert (await client.get(f"/v2/models/mlp/versions/{v}")).status_code == 200
    assert (await client.get(f"/v2/models/mlp/versions/{v}/ready")).status_code == 200
    body, headers = encode_request({"x": X}, binary=False, binary_outputs=False)
    ok = await client.post(f"/v2/models/mlp/versions/{v}/infer", content=body, headers=headers)
    assert ok.status_code == 200
    bad = await client.get("/v2/models/mlp/versions/7")
    assert bad.status_code == 404
    assert "no version '7'" in bad.json()["error"]


async def test_json_inference_matches_onnxruntime(
    client: httpx.AsyncClient, mlp_artifact: Path
) -> None:
    doc = {
        "id": "req-1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}],
    }
    r = await client.post("/v2/models/mlp/infer", json=doc)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "mlp"
    assert out["id"] == "req-1"
    (y,) = out["outputs"]
    assert (y["name"], y["datatype"], y["shape"]) == ("y", "FP32", [2, 3])
    got = np.asarray(y["data"], dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(got, reference(mlp_artifact, X))


async def test_nested_json_data_is_accepted_in_row_major_order(client: httpx.AsyncClient) -> None:
    flat = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}]
    }
    nested = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.tolist()}]}
    a = (await client.post("/v2/models/mlp/infer", json=flat)).json()
    b = (await client.post("/v2/models/mlp/infer", json=nested)).json()
    assert a["outputs"] == b["outputs"]


async def test_binary_and_json_paths_give_identical_outputs(client: httpx.AsyncClient) -> None:
    results = []
    for binary in (False, True):
        body, headers = encode_request({"x": X}, binary=binary, binary_outputs=binary)
        r = await client.post("/v2/models/mlp/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        if binary:
            assert r.headers["content-type"] == "application/octet-stream"
            assert int(r.headers["inference-header-content-length"]) < len(r.content)
        results.append(decode_response(r.content, r.headers).outputs["y"])
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0].dtype == results[1].dtype == np.float32


async def test_binary_output_can_be_asked_per_output(client: httpx.AsyncClient) -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    r = await client.post("/v2/models/mlp/infer", json=doc)
    assert r.status_code == 200
    header_len = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:header_len])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 2 * 3 * 4}
    assert len(r.content) == header_len + 24


async def test_metrics_count_requests_validation_failures_and_provider(
    client: httpx.AsyncClient,
) -> None:
    body, headers = encode_request({"x": X}, binary=True)
    await client.post("/v2/models/mlp/infer", content=body, headers=headers)
    await client.post("/v2/models/mlp/infer", json={"inputs": [{"name": "nope"}]})
    text = (await client.get("/metrics")).text
    assert 'kubeaccel_requests_total{code="200",endpoint="infer"} 1.0' in text
    assert 'kubeaccel_requests_total{code="400",endpoint="infer"} 1.0' in text
    assert 'kubeaccel_validation_failures_total{reason="schema"} 1.0' in text
    assert 'kubeaccel_execution_provider{provider="CPUExecutionProvider"} 1.0' in text
    assert "kubeaccel_request_duration_seconds_bucket" in text
    assert "kubeaccel_batch_size_bucket" in text
    assert "kubeaccel_ready 1.0" in text


async def test_openapi_document_is_served_for_the_model_and_the_generic_one_is_committed(
    client: httpx.AsyncClient, mlp_model: LoadedModel
) -> None:
    served = (await client.get("/openapi.json")).json()
    assert served["openapi"].startswith("3.")
    assert "/v2/models/{model_name}/infer" in served["paths"]
    assert served == build_openapi(mlp_model, routes=False)  # a single shard never routes
    committed = REPO / "docs" / "openapi-runtime.json"
    assert committed.read_text() == render(), (
        "docs/openapi-runtime.json is stale: run "
        "`python -m kubeaccel_runtime.serve.openapi --write docs/openapi-runtime.json`"
    )
    assert json.loads(committed.read_text()) == build_openapi()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/v2/models/other", 404),
        ("POST", "/v2/models/other/infer", 404),
        ("GET", "/v2/models/mlp/infer", 405),
        ("POST", "/v2/health/ready", 405),
        ("GET", "/v2/models/mlp/unknown", 404),
    ],
)
async def test_unknown_paths_models_and_methods_get_json_errors(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    r = await client.request(method, path)
    assert r.status_code == status
    assert r.json()["error"]
    if status == 405:
        assert r.headers["allow"]


async def test_a_server_without_a_model_is_live_but_not_ready(
    app_factory: Callable[..., ServeApp],
) -> None:
    slot = ModelSlot("mlp")
    app = app_factory(slot)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/v2/health/live")).status_code == 200
        r = await c.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.json() == {"ready": False, "error": "model is loading"}
        r = await c.post("/v2/models/mlp/infer", json={"inputs": []})
        assert r.status_code == 503
        slot.fail("sha256 mismatch")
        r = await c.get("/v2/models/mlp/ready")
        assert r.status_code == 503
        assert "sha256 mismatch" in r.json()["error"]


def test_the_sync_client_works_against_a_real_loopback_server(
    mlp_model: LoadedModel, mlp_artifact: Path, app_factory: Callable[..., ServeApp]
) -> None:
    with ServerThread(app_factory(mlp_model)) as srv, InferenceClient(srv.url) as cli:
        assert cli.live()
        assert cli.ready()
        assert cli.ready("mlp")
        assert cli.metadata("mlp")["name"] == "mlp"
        for binary in (True, False):
            out = cli.infer("mlp", {"x": X}, binary=binary)
            np.testing.assert_array_equal(out.outputs["y"], reference(mlp_artifact, X))


async def test_inline_and_worker_thread_session_calls_give_identical_outputs(
    mlp_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    results = []
    for inline_ms in (0.0, 1000.0):
        app = app_factory(mlp_model, ServeSettings(inline_run_ms=inline_ms))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            outs = []
            for _ in range(3):  # the first call always measures in the worker thread
                body, headers = encode_request({"x": X})
                r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
                outs.append(decode_response(r.content, r.headers).outputs["y"])
            text = (await c.get("/metrics")).text
        assert "kubeaccel_queue_duration_seconds_count 3.0" in text
        results.append(outs)
    for a, b in zip(results[0], results[1], strict=True):
        np.testing.assert_array_equal(a, b)


async def test_too_many_requests_in_flight_get_a_503(
    mlp_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    app = app_factory(mlp_model, ServeSettings(max_inflight=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body, headers = encode_request({"x": X})
        r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert r.status_code == 503
    assert "limits 0 requests" in r.json()["error"]


async def test_concurrent_uploads_beyond_the_byte_budget_get_a_503(
    mlp_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    import asyncio

    app = app_factory(mlp_model, ServeSettings(max_inflight_bytes=10_000))
    body, headers = encode_request({"x": X})
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:10]
        await release.wait()
        yield body[10:]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        # Without Content-Length the first upload reserves the whole 16 MiB cap.
        first = asyncio.ensure_future(
            c.post("/v2/models/mlp/infer", content=slow_body(), headers=headers)
        )
        while app.inflight == 0:
            await asyncio.sleep(0.01)
        second = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
        release.set()
        assert (await first).status_code == 200  # one request is always admitted
    assert second.status_code == 503
    assert (
        "bytes in flight" in second.json()["error"] or "bytes) in flight" in second.json()["error"]
    )
    assert app.inflight == 0 and app.inflight_bytes == 0


def test_short_calls_run_inline_when_alone_and_only_very_short_ones_under_load(
    mlp_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    app = app_factory(mlp_model, ServeSettings(inline_run_ms=0.4))
    assert not app._run_inline(1)  # nothing measured yet: the thread measures first
    app._learn_cost(0.0002)  # 0.2 ms per row
    app.inflight = 1
    assert app._run_inline(1)
    assert not app._run_inline(2)  # 0.4 ms expected: at the limit
    app.inflight = 5
    assert not app._run_inline(1)  # others in flight: limit 0.1 ms
    app._learn_cost(0.00005)
    assert app._run_inline(1)
    app._learn_cost(0.01)  # one slow (GIL-delayed) sample moves the estimate only 5 %
    assert app._row_cost_s is not None and app._row_cost_s < 0.001
    app.inflight = 0
