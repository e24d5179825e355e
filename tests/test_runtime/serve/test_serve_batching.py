"""Dynamic batching: merged session calls, each caller gets its own rows and its own errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from kubeaccel_runtime.client import decode_response, encode_request
from kubeaccel_runtime.serve.app import ServeApp, ServeSettings
from kubeaccel_runtime.serve.batching import Batcher, BatchStats
from kubeaccel_runtime.serve.session import LoadedModel

Tensors = dict[str, np.ndarray]


def direct(artifact: Path) -> Callable[[np.ndarray], np.ndarray]:
    sess = ort.InferenceSession(str(artifact / "shard-0.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(["y"], {"x": x})[0]  # type: ignore[no-any-return]


async def test_concurrent_callers_each_get_their_own_results_from_merged_batches(
    mlp_model: LoadedModel, mlp_artifact: Path, app_factory: Callable[..., ServeApp]
) -> None:
    settings = ServeSettings(batching=True, max_batch_size=16, max_delay_ms=20)
    app = app_factory(mlp_model, settings)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(40)]
    expected = direct(mlp_artifact)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:

        async def call(x: np.ndarray, binary: bool) -> np.ndarray:
            body, headers = encode_request({"x": x}, binary=binary, binary_outputs=binary)
            r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert r.status_code == 200, r.text
            return decode_response(r.content, r.headers).outputs["y"]

        results = await asyncio.gather(*(call(x, i % 2 == 0) for i, x in enumerate(inputs)))
        metrics = (await c.get("/metrics")).text
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, expected(x), rtol=1e-5, atol=1e-6)
    # 40 requests made fewer session calls: some batches held more than one request.
    calls = float(metrics.split("kubeaccel_batch_size_count ")[1].split()[0])
    assert calls < 40
    assert "kubeaccel_queue_duration_seconds_count 40.0" in metrics


def _echo_rows(inputs: Tensors) -> Tensors:
    """A fake session: outputs = inputs * 2, records nothing (thread-safe)."""
    return {"y": inputs["x"] * 2}


async def test_requests_with_different_non_batch_shapes_are_never_merged() -> None:
    seen: list[tuple[int, ...]] = []

    def run(inputs: Tensors) -> Tensors:
        seen.append(inputs["x"].shape)
        return _echo_rows(inputs)

    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(run, pool, max_batch_size=64, max_delay_s=0.05)
        batcher.start()
        a = [np.full((1, 3), i, np.float32) for i in range(4)]
        b = [np.full((1, 5), i, np.float32) for i in range(4)]
        jobs = [batcher.submit({"x": x}, 1, ("x", x.shape[1:])) for x in (*a, *b)]
        outs = await asyncio.gather(*jobs)
        await batcher.stop()
    for x, out in zip((*a, *b), outs, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)
    assert all(shape[1] in (3, 5) for shape in seen)
    assert sorted(shape[0] for shape in seen if shape[1] == 3) == [4]
    assert sorted(shape[0] for shape in seen if shape[1] == 5) == [4]


async def test_a_merged_batch_never_exceeds_max_batch_size() -> None:
    sizes: list[int] = []

    def run(inputs: Tensors) -> Tensors:
        sizes.append(inputs["x"].shape[0])
        return _echo_rows(inputs)

    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(run, pool, max_batch_size=5, max_delay_s=0.05)
        batcher.start()
        xs = [np.full((2, 1), i, np.float32) for i in range(9)]
        outs = await asyncio.gather(*(batcher.submit({"x": x}, 2, "s") for x in xs))
        await batcher.stop()
    assert max(sizes) <= 5
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out["y"], x * 2)


async def test_an_error_in_a_merged_batch_stays_with_the_request_that_caused_it() -> None:
    batches: list[int] = []

    def run(inputs: Tensors) -> Tensors:
        batches.append(inputs["x"].shape[0])
        if (inputs["x"] < 0).any():
            raise ValueError("negative input")
        return _echo_rows(inputs)

    stats: list[BatchStats] = []
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(run, pool, max_batch_size=8, max_delay_s=0.05, on_batch=stats.append)
        batcher.start()
        xs = [np.full((1, 2), v, np.float32) for v in (1, 2, -3, 4)]
        outs: list[Any] = await asyncio.gather(
            *(batcher.submit({"x": x}, 1, "s") for x in xs), return_exceptions=True
        )
        await batcher.stop()
    assert isinstance(outs[2], ValueError)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(outs[i]["y"], xs[i] * 2)
    assert batches[0] == 4  # merged first, then retried one by one
    assert batches[1:] == [1, 1, 1, 1]


async def test_stopping_the_batcher_finishes_queued_requests() -> None:
    with ThreadPoolExecutor(1) as pool:
        batcher = Batcher(_echo_rows, pool, max_batch_size=4, max_delay_s=0.5)
        batcher.start()
        job = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1), np.float32)}, 1, "s"))
        await asyncio.sleep(0)
        await batcher.stop()
        out = await job
    np.testing.assert_array_equal(out["y"], [[2.0]])
    with pytest.raises(RuntimeError, match="stopped"):
        await batcher.submit({"x": np.ones((1, 1), np.float32)}, 1, "s")


async def test_nan_output_of_one_batched_request_is_rejected_without_touching_the_others(
    sqrt_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    app = app_factory(sqrt_model, ServeSettings(batching=True, max_batch_size=8, max_delay_ms=20))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:

        async def call(values: list[float]) -> httpx.Response:
            doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": values}]}
            return await c.post("/v2/models/sqrt/infer", json=doc)

        good, bad, good2 = await asyncio.gather(call([4, 9]), call([-1, 4]), call([16, 25]))
        metrics = (await c.get("/metrics")).text
    assert good.json()["outputs"][0]["data"] == [2, 3]
    assert good2.json()["outputs"][0]["data"] == [4, 5]
    assert bad.status_code == 422
    assert "'y' contains NaN or Inf" in bad.json()["error"]
    assert 'kubeaccel_nonfinite_outputs_total{output="y"} 1.0' in metrics
