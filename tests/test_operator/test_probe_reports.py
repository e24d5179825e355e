"""probe.py, rollout counters: which pods are asked, and what a bad answer gives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubeaccel_api.routing import RoutingReport, ShadowCounters
from kubeaccel_operator.probe import pod_url, read_report, rollout_reports


def pod(ip: str | None = "10.0.0.7", ready: bool = True, port: int | None = 8080) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "runtime"}
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port}]
    status: dict[str, Any] = {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]
    }
    if ip is not None:
        status["podIP"] = ip
    return {"metadata": {"name": "p"}, "spec": {"containers": [container]}, "status": status}


def test_only_ready_pods_with_an_ip_are_asked() -> None:
    assert pod_url(pod()) == "http://10.0.0.7:8080"
    assert pod_url(pod(port=9000)) == "http://10.0.0.7:9000"
    assert pod_url(pod(ip="fd00::7")) == "http://[fd00::7]:8080"
    assert pod_url(pod(ready=False)) is None
    assert pod_url(pod(ip=None)) is None
    terminating = pod()
    terminating["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert pod_url(terminating) is None


@pytest.fixture
def server() -> Iterator[dict[str, bytes]]:
    """A loopback HTTP server answering /v2/rollout with whatever the test puts in `answer`."""
    answer: dict[str, bytes] = {"body": b"{}"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answer["body"]
            self.send_response(200 if self.path == "/v2/rollout" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    answer["url"] = f"http://127.0.0.1:{httpd.server_address[1]}".encode()
    yield answer
    httpd.shutdown()
    thread.join(5)


def test_a_report_is_read_and_a_broken_one_is_skipped(server: dict[str, bytes]) -> None:
    url = server["url"].decode()
    report = RoutingReport(id="r1", shadow=ShadowCounters(compared=3))
    server["body"] = json.dumps(report.to_wire()).encode()
    assert read_report(url) == report
    server["body"] = b'{"shadow": {"compared": -1}}'
    assert read_report(url) is None
    server["body"] = b"not json"
    assert read_report(url) is None


def test_unreachable_pods_give_no_report() -> None:
    assert rollout_reports([pod(ip="127.0.0.1", port=1)], read_report) == ()
