"""Shard chaining: shard 0 runs its stage, forwards binary tensors to shard 1, returns the end."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from kubeaccel_runtime.client import decode_response, encode_request
from kubeaccel_runtime.serve.app import ServeApp, ServeSettings
from kubeaccel_runtime.serve.chain import ChainConfig
from kubeaccel_runtime.serve.session import LoadedModel, LoadError, load_shard
from serve_fixtures import (
    CPU1,
    MLP_INPUTS,
    ServerThread,
    build_mlp,
    free_port,
    spec_for,
    write_artifact,
)
from tcp_front import TcpFront

X = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def split_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split")
    spec = spec_for(MLP_INPUTS, shards=2)
    return write_artifact(root, build_mlp(), spec, name="mlp", cut=["hidden"])


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory: pytest.TempPathFactory) -> Callable[[np.ndarray], np.ndarray]:
    path = tmp_path_factory.mktemp("whole") / "m.onnx"
    import onnx

    onnx.save(build_mlp(), path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(["y"], {"x": x})[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def shard1_server(split_artifact: Path) -> Iterator[ServerThread]:
    from kubeaccel_runtime.serve.app import create_app

    with ServerThread(create_app(load_shard(split_artifact, 1, config=CPU1))) as srv:
        yield srv


def chain_cfg(url: str, **kw: float) -> ServeSettings:
    return ServeSettings(chain=ChainConfig(next_url=url, ready_cache_s=0.0, **kw))  # type: ignore[arg-type]


@pytest.fixture
def shard0(split_artifact: Path) -> LoadedModel:
    return load_shard(split_artifact, 0, forwarding=True, config=CPU1)


async def _client(app: ServeApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
    await app.aclose()


async def test_a_two_shard_chain_returns_the_unsplit_models_outputs(
    shard0: LoadedModel,
    shard1_server: ServerThread,
    unsplit: Callable[[np.ndarray], np.ndarray],
    app_factory: Callable[..., ServeApp],
) -> None:
    app = app_factory(shard0, chain_cfg(shard1_server.url))
    async for c in _client(app):
        meta = (await c.get("/v2/models/mlp")).json()
        assert meta["inputs"][0]["name"] == "x"
        assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
        assert (await c.get("/v2/health/ready")).status_code == 200
        for binary in (False, True):
            body, headers = encode_request({"x": X}, binary=binary, binary_outputs=binary)
            r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert r.status_code == 200, r.text
            y = decode_response(r.content, r.headers).outputs["y"]
            np.testing.assert_array_equal(y, unsplit(X))


async def test_the_chain_rejects_bad_input_at_the_first_shard(
    shard0: LoadedModel, shard1_server: ServerThread, app_factory: Callable[..., ServeApp]
) -> None:
    app = app_factory(shard0, chain_cfg(shard1_server.url))
    async for c in _client(app):
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
        r = await c.post("/v2/models/mlp/infer", json=doc)
        assert r.status_code == 400
        assert "dimension 1 must be 4" in r.json()["error"]


async def test_a_shard_is_not_ready_until_its_next_shard_is(
    shard0: LoadedModel, split_artifact: Path, app_factory: Callable[..., ServeApp]
) -> None:
    port = free_port()
    app = app_factory(shard0, chain_cfg(f"http://127.0.0.1:{port}", connect_timeout_s=0.5))
    async for c in _client(app):
        r = await c.get("/v2/models/mlp/ready")
        assert r.status_code == 503
        assert "unreachable" in r.json()["error"]
        from kubeaccel_runtime.serve.app import create_app

        with ServerThread(create_app(load_shard(split_artifact, 1, config=CPU1)), port=port):
            assert (await c.get("/v2/models/mlp/ready")).status_code == 200


async def test_an_unreachable_next_shard_gives_a_503_after_bounded_retries(
    shard0: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    app = app_factory(shard0, chain_cfg(url, connect_timeout_s=0.5, backoff_s=0.01))
    async for c in _client(app):
        body, headers = encode_request({"x": X})
        started = time.monotonic()
        r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
        assert r.status_code == 503
        assert f"next shard {url} unreachable after 3 attempts" in r.json()["error"]
        assert time.monotonic() - started < 10
        metrics = (await c.get("/metrics")).text
        assert 'kubeaccel_downstream_errors_total{kind="unreachable"} 1.0' in metrics


async def test_a_next_shard_that_rejects_the_tensors_gives_a_502(
    shard0: LoadedModel, mlp_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    # The "next shard" serves the whole MLP: it expects x, not the intermediate tensor.
    from kubeaccel_runtime.serve.app import create_app

    with ServerThread(create_app(mlp_model)) as wrong:
        app = app_factory(shard0, chain_cfg(wrong.url))
        async for c in _client(app):
            body, headers = encode_request({"x": X})
            r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert r.status_code == 502
            error = r.json()["error"]
            assert "answered HTTP 400" in error
            assert "unknown input 'hidden'" in error


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    t.join()
    for conn in held:
        conn.close()
    sock.close()


async def test_a_next_shard_that_hangs_gives_a_503_instead_of_a_hang(
    shard0: LoadedModel, silent_server: str, app_factory: Callable[..., ServeApp]
) -> None:
    app = app_factory(shard0, chain_cfg(silent_server, request_timeout_s=0.5, ready_timeout_s=0.3))
    async for c in _client(app):
        body, headers = encode_request({"x": X})
        r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
        assert r.status_code == 503
        assert "did not answer within 0.5 s" in r.json()["error"]
        ready = await c.get("/v2/health/ready")
        assert ready.status_code == 503


def test_the_last_shard_cannot_be_started_with_a_next_shard(split_artifact: Path) -> None:
    with pytest.raises(LoadError, match="last shard"):
        load_shard(split_artifact, 1, forwarding=True, config=CPU1)


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_next_shard_replica_that_dies_mid_request_is_retried_invisibly(
    reset: bool,
    shard0: LoadedModel,
    shard1_server: ServerThread,
    unsplit: Callable[[np.ndarray], np.ndarray],
    app_factory: Callable[..., ServeApp],
) -> None:
    with TcpFront(shard1_server.url, drops=2, reset=reset) as front:
        app = app_factory(shard0, chain_cfg(front.url, backoff_s=0.01))
        async for c in _client(app):
            body, headers = encode_request({"x": X})
            r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(
                decode_response(r.content, r.headers).outputs["y"], unsplit(X)
            )
            metrics = (await c.get("/metrics")).text
            assert 'kubeaccel_downstream_retries_total{cause="transport"} 2.0' in metrics


async def test_a_next_shard_that_keeps_dying_gives_a_503_after_the_retries(
    shard0: LoadedModel, shard1_server: ServerThread, app_factory: Callable[..., ServeApp]
) -> None:
    with TcpFront(shard1_server.url, drops=10, reset=True) as front:
        app = app_factory(shard0, chain_cfg(front.url, backoff_s=0.01))
        async for c in _client(app):
            body, headers = encode_request({"x": X})
            r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert r.status_code == 503
            assert "unreachable after 3 attempts" in r.json()["error"]
