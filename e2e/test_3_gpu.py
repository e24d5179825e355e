"""The GPU variant: runs only when the cluster advertises GPU capacity (nvidia.com/gpu)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubeaccel_e2e import (
    GPU_RUNTIME_IMAGE,
    READY_TIMEOUT,
    Kube,
    condition,
    http,
    infer_body,
    port_forward,
    sh,
    wait_until,
)

pytestmark = pytest.mark.e2e

GPU_RESOURCE = "nvidia.com/gpu"


def gpu_capacity() -> int:
    """GPUs allocatable across the cluster's nodes."""
    nodes = json.loads(sh(["kubectl", "get", "nodes", "-o", "json"]).stdout)["items"]
    return sum(int(n["status"].get("allocatable", {}).get(GPU_RESOURCE, "0")) for n in nodes)


@pytest.fixture(scope="module")
def gpu_model(namespace: Kube, example_cnn: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example CNN served on one GPU with the CUDA execution provider."""
    if gpu_capacity() < 1:
        pytest.skip(f"the cluster has no allocatable {GPU_RESOURCE}")
    resource = copy.deepcopy(example_cnn)
    resource["metadata"] = {"name": f"{example_cnn['metadata']['name']}-gpu"[:40]}
    runtime = resource["spec"].setdefault("runtime", {})
    runtime.update(
        executionProvider="cuda",
        image=GPU_RUNTIME_IMAGE,
        resources={**runtime.get("resources", {}), "gpus": 1, "gpuResourceName": GPU_RESOURCE},
    )
    namespace.apply(resource)
    yield resource
    namespace(
        "delete",
        "am",
        resource["metadata"]["name"],
        "--ignore-not-found",
        "--wait=false",
        check=False,
    )


def test_a_gpu_model_is_scheduled_on_a_gpu_and_serves(
    namespace: Kube, gpu_model: dict[str, Any]
) -> None:
    name = gpu_model["metadata"]["name"]

    def ready() -> dict[str, Any] | None:
        obj = namespace.get("acceleratedmodel", name)
        if (obj.get("status") or {}).get("phase") == "Failed":
            pytest.fail(f"{name} failed: {obj['status']}")
        cond = condition(obj, "Ready")
        return obj if cond and cond["status"] == "True" else None

    obj = wait_until(f"{name} Ready=True", ready, READY_TIMEOUT)
    deployment = namespace.get("deployment", obj["status"]["shards"][0]["deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"][GPU_RESOURCE] in ("1", 1)
    assert container["image"] == gpu_model["spec"]["runtime"]["image"]
    with port_forward(namespace, f"service/{name}", 8080) as base:
        code, answer = http("POST", f"{base}/v2/models/{name}/infer", infer_body(gpu_model))
        assert code == 200, answer
