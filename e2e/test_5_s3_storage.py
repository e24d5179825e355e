"""storage.type s3 on a real cluster: publish to a bucket, fetch and verify in every shard pod.

Pods cannot reach this machine's loopback, so the S3-compatible server runs in the test's
namespace: moto's S3 server from the image $KUBEACCEL_E2E_S3_IMAGE (default
kubeaccel/s3-moto:e2e), built from python:3.11-slim-bookworm with
`pip install "moto[s3]==5.2.5" "flask>=3,<4" "flask-cors>=5,<7"` and loaded onto the node
like the other images. The runtime image must carry the `s3` extra (MinIO's client): the
Job publishes with it and the shards' init container fetches with it. Without the server
image the module skips with that reason.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubeaccel_e2e import (
    READY_TIMEOUT,
    SHORT_TIMEOUT,
    Kube,
    condition,
    http,
    infer_body,
    port_forward,
    sh,
    wait_until,
)

pytestmark = pytest.mark.e2e

S3_IMAGE = os.environ.get("KUBEACCEL_E2E_S3_IMAGE", "kubeaccel/s3-moto:e2e")
S3_PORT = 5000
BUCKET = "models"
SECRET = "s3-credentials"
KEYS = {"AWS_ACCESS_KEY_ID": "kubeaccel-e2e", "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex}


def _image_present(image: str) -> bool:
    if shutil.which("docker") is None:
        return False
    return sh(["docker", "image", "inspect", image], check=False, timeout=60).returncode == 0


def _s3_server(namespace: str) -> list[dict[str, Any]]:
    """moto's S3 server as a Deployment and Service `s3`, restricted-PSS compliant."""
    labels = {"app.kubernetes.io/name": "s3-e2e"}
    container = {
        "name": "moto",
        "image": S3_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["moto_server", "-H", "0.0.0.0", "-p", str(S3_PORT)],
        "ports": [{"containerPort": S3_PORT}],
        "readinessProbe": {"tcpSocket": {"port": S3_PORT}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "s3", "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s3", "namespace": namespace, "labels": labels},
            "spec": {"selector": labels, "ports": [{"port": S3_PORT, "targetPort": S3_PORT}]},
        },
    ]


@pytest.fixture(scope="module")
def bucket(namespace: Kube) -> Iterator[Any]:
    """The in-cluster S3 server, its credentials Secret, and a client through port-forward."""
    if not _image_present(S3_IMAGE):
        pytest.skip(f"no S3 server image {S3_IMAGE} on this machine (see the module docstring)")
    from kubeaccel_runtime import objectstore

    for obj in _s3_server(namespace.namespace):
        namespace.apply(obj)
    namespace("create", "secret", "generic", SECRET,
              *(f"--from-literal={k}={v}" for k, v in KEYS.items()))  # fmt: skip
    namespace.wait("deployment/s3", "condition=Available", SHORT_TIMEOUT)
    with port_forward(namespace, "service/s3", S3_PORT) as url, pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", **KEYS}.items():
            mp.setenv(key, value)
        client = objectstore.connect(objectstore.S3Settings.from_env())
        client.make_bucket(BUCKET)
        yield client


@pytest.fixture(scope="module")
def s3_model(namespace: Kube, bucket: Any, example_cnn: dict[str, Any]) -> dict[str, Any]:
    """The example CNN with its artifacts in the in-cluster bucket."""
    resource = copy.deepcopy(example_cnn)
    resource["metadata"] = {"name": "cnn-s3"}
    resource["spec"]["storage"] = {
        "type": "s3",
        "s3": {
            "bucket": BUCKET,
            "endpoint": f"http://s3.{namespace.namespace}.svc.cluster.local:{S3_PORT}",
            "region": "us-east-1",
            "secretName": SECRET,
        },
    }
    namespace.apply(resource)
    return resource


def _ready(kube: Kube, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.get("acceleratedmodel", name)
        status = obj.get("status") or {}
        if status.get("phase") == "Failed":
            pytest.fail(f"{name} failed: {status.get('message')}")
        cond = condition(obj, "Ready")
        return obj if cond and cond["status"] == "True" else None

    result = wait_until(f"{name} Ready", check, READY_TIMEOUT)
    assert isinstance(result, dict)
    return result


def test_the_job_publishes_to_the_bucket_and_the_shards_serve_the_fetched_artifact(
    namespace: Kube, bucket: Any, s3_model: dict[str, Any]
) -> None:
    from kubeaccel_runtime.objectstore import S3Uri, exists

    obj = _ready(namespace, "cnn-s3")
    artifact = obj["status"]["artifactId"]
    prefix = S3Uri(BUCKET, f"kubeaccel/cnn-s3/{artifact}")
    assert exists(bucket, prefix.child("manifest.json"))
    assert namespace.get("pvc", selector="kubeaccel.io/model=cnn-s3")["items"] == []
    selector = "kubeaccel.io/model=cnn-s3,app.kubernetes.io/component=runtime"
    pods = namespace.get("pods", selector=selector)["items"]
    fetched = [
        s
        for p in pods
        for s in p["status"].get("initContainerStatuses", [])
        if s["name"] == "fetch-artifact"
    ]
    assert fetched and all(s["state"]["terminated"]["exitCode"] == 0 for s in fetched)
    with port_forward(namespace, "service/cnn-s3", 8080) as url:
        status, body = http("POST", f"{url}/v2/models/cnn-s3/infer", infer_body(s3_model))
    assert status == 200, body


def test_a_changed_object_in_the_bucket_is_never_served(
    namespace: Kube, bucket: Any, s3_model: dict[str, Any]
) -> None:
    obj = _ready(namespace, "cnn-s3")
    artifact = obj["status"]["artifactId"]
    key = f"kubeaccel/cnn-s3/{artifact}/shard-0.onnx"
    data = bytearray(bucket.get_object(BUCKET, key).read())
    data[-1] ^= 0xFF
    bucket.put_object(BUCKET, key, io.BytesIO(bytes(data)), len(data))
    namespace("delete", "pods", "-l", "kubeaccel.io/model=cnn-s3,kubeaccel.io/shard=0")

    def refused() -> str | None:
        pods = namespace.get("pods", selector="kubeaccel.io/model=cnn-s3,kubeaccel.io/shard=0")
        for pod in pods["items"]:
            for s in pod["status"].get("initContainerStatuses", []):
                state = s.get("lastState", {}).get("terminated") or s["state"].get("terminated")
                if state and state.get("exitCode") == 1:
                    return str(state.get("message", ""))
        return None

    message = wait_until("the fetch-artifact init container to refuse", refused, SHORT_TIMEOUT)
    assert "shard-0.onnx: sha256 mismatch" in message
