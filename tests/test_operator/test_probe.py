"""Reading the execution provider a shard pod reports, and the status it becomes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubeaccel_operator.kube import owned_by_deployment
from kubeaccel_operator.probe import (
    pod_ready,
    provider_from_metrics,
    read_provider,
    shard_providers,
)
from kubeaccel_runtime.serve.metrics import ServeMetrics
from prometheus_client import generate_latest


def server_metrics(provider: str) -> str:
    """What a real `kubeaccel serve` publishes on /metrics for this provider."""
    metrics = ServeMetrics()
    metrics.provider.labels(provider).set(1)
    return generate_latest(metrics.registry).decode()


@pytest.fixture
def metrics_server() -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP server answering /metrics with what `body[0]` holds."""
    body = [server_metrics("CPUExecutionProvider")]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body[0].encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], body
    server.shutdown()


def pod(
    shard: str = "0",
    ip: str | None = "10.244.0.7",
    ready: bool = True,
    deleting: bool = False,
    owner: str = "cnn-shard-0-5d9c",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "labels": {"kubeaccel.io/shard": shard},
        "ownerReferences": [{"kind": "ReplicaSet", "name": owner}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    status: dict[str, Any] = {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]
    }
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def shard_of(p: Any) -> str | None:
    index = p["metadata"]["labels"]["kubeaccel.io/shard"]
    return f"cnn-shard-{index}" if index.isdigit() else None


def test_the_provider_gauge_of_the_real_server_is_read() -> None:
    assert provider_from_metrics(server_metrics("CUDAExecutionProvider")) == (
        "CUDAExecutionProvider"
    )
    assert provider_from_metrics("# no gauge here\nother_metric 1\n") is None
    zero = 'kubeaccel_execution_provider{provider="CUDAExecutionProvider"} 0.0\n'
    assert provider_from_metrics(zero) is None


def test_a_pod_is_read_over_http_and_a_silent_one_gives_none(
    metrics_server: tuple[int, list[str]],
) -> None:
    port, body = metrics_server
    assert read_provider("127.0.0.1", port=port) == "CPUExecutionProvider"
    body[0] = server_metrics("TensorrtExecutionProvider")
    assert read_provider("127.0.0.1", port=port) == "TensorrtExecutionProvider"
    body[0] = "not prometheus text"
    assert read_provider("127.0.0.1", port=port) is None
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there.
    assert read_provider("192.0.2.1", port=port, timeout=0.2) is None


def test_only_ready_pods_with_an_ip_are_asked_and_providers_are_grouped_by_shard() -> None:
    answers = {"10.0.0.1": "CPUExecutionProvider", "10.0.0.2": "CUDAExecutionProvider"}
    asked: list[str] = []

    def read(ip: str) -> str | None:
        asked.append(ip)
        return answers.get(ip)

    pods = [
        pod("0", "10.0.0.1"),
        pod("0", "10.0.0.2"),
        pod("1", "10.0.0.1"),
        pod("1", "10.0.0.9"),  # does not answer
        pod("1", "10.0.0.3", ready=False),
        pod("1", "10.0.0.4", deleting=True),
        pod("1", None),
        pod("x", "10.0.0.5"),
    ]
    found = shard_providers(pods, shard_of, read)
    assert found == {
        "cnn-shard-0": ("CPUExecutionProvider", "CUDAExecutionProvider"),
        "cnn-shard-1": ("CPUExecutionProvider",),
    }
    assert sorted(asked) == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.9"]
    assert not pod_ready(pod(ready=False)) and not pod_ready(pod(deleting=True))


def test_a_pod_belongs_to_a_deployment_through_its_replicaset_name() -> None:
    deployments = {"cnn-shard-0": {}, "cnn-shard-1": {}}
    assert owned_by_deployment(pod(owner="cnn-shard-1-7f8d9"), deployments)
    assert not owned_by_deployment(pod(owner="cnn-candidate-shard-0-7f8d9"), deployments)
    assert not owned_by_deployment({"metadata": {}}, deployments)
