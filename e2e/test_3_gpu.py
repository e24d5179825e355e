"""The GPU variant: runs only when the cluster advertises GPU capacity (nvidia.com/gpu).

On a node whose GPUs are advertised for scheduling only (no device, no driver: the CI
cluster), the GPU image must still serve: `executionProvider: auto` falls back to the CPU
provider, and status says which provider each shard really got.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubeaccel_e2e import (
    GPU_RUNTIME_IMAGE,
    Kube,
    get_model,
    http,
    infer_body,
    port_forward,
    sh,
    wait_model,
    wait_ready,
)

pytestmark = pytest.mark.e2e

GPU_RESOURCE = "nvidia.com/gpu"
PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"}


def gpu_capacity() -> int:
    """GPUs allocatable across the cluster's nodes."""
    nodes = json.loads(sh(["kubectl", "get", "nodes", "-o", "json"]).stdout)["items"]
    return sum(int(n["status"].get("allocatable", {}).get(GPU_RESOURCE, "0")) for n in nodes)


def real_gpu_nodes() -> bool:
    """Whether a node runs NVIDIA's device plugin (its GPUs are more than a number)."""
    pods = sh(["kubectl", "get", "pods", "-A", "-o", "name"]).stdout
    return "nvidia-device-plugin" in pods


@pytest.fixture(scope="module")
def gpu_model(namespace: Kube, example_cnn: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example CNN on the GPU image, one GPU per shard, provider `auto`."""
    if gpu_capacity() < 1:
        pytest.skip(f"the cluster has no allocatable {GPU_RESOURCE}")
    resource = copy.deepcopy(example_cnn)
    resource["metadata"] = {"name": f"{example_cnn['metadata']['name']}-gpu"[:40]}
    runtime = resource["spec"].setdefault("runtime", {})
    runtime.update(
        executionProvider="auto",
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
    obj = wait_ready(namespace, name, get_model(namespace, name)["metadata"]["generation"])
    for shard in obj["status"]["shards"]:
        deployment = namespace.get("deployment", shard["deployment"])
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"][GPU_RESOURCE] in ("1", 1)
        assert container["image"] == gpu_model["spec"]["runtime"]["image"]
    with port_forward(namespace, f"service/{name}", 8080) as base:
        code, answer = http("POST", f"{base}/v2/models/{name}/infer", infer_body(gpu_model))
        assert code == 200, answer


def test_status_reports_the_provider_each_shard_got(
    namespace: Kube, gpu_model: dict[str, Any]
) -> None:
    name = gpu_model["metadata"]["name"]
    shards = len(get_model(namespace, name)["status"]["shards"])

    def reported(obj: dict[str, Any]) -> list[str] | None:
        got = [s.get("executionProvider") for s in obj["status"].get("shards") or []]
        return got if len(got) == shards and all(got) else None

    providers = wait_model(namespace, name, "every shard's provider in status", reported, 120)
    assert set(providers) <= PROVIDERS, providers
    if not real_gpu_nodes():
        # Advertised GPUs without a device: `auto` fell back, and says so.
        assert set(providers) == {"CPUExecutionProvider"}, providers
