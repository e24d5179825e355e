"""Optimize where it will serve: a GPU model's optimization Job on the real API server.

Runs only when the cluster advertises an allocatable GPU (nvidia.com/gpu). It checks what
the Job is given, not that it finishes: that needs a real GPU behind the resource (a node
that only advertises one can run the Job, and `executionProvider: auto` then records a
CPU fallback in its report).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_e2e import GPU_RUNTIME_IMAGE, SHORT_TIMEOUT, Kube, sh, wait_until
from test_3_gpu import GPU_RESOURCE, gpu_capacity

pytestmark = pytest.mark.e2e

PRODUCT_LABEL = "nvidia.com/gpu.product"
TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def gpu_nodes() -> list[dict[str, Any]]:
    """Nodes with an allocatable GPU."""
    nodes = json.loads(sh(["kubectl", "get", "nodes", "-o", "json"]).stdout)["items"]
    return [n for n in nodes if int(n["status"].get("allocatable", {}).get(GPU_RESOURCE, "0")) > 0]


@pytest.fixture(scope="module")
def gpu_job_model(namespace: Kube, example_cnn: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example CNN for one GPU with `auto`, pinned to the GPU product of a GPU node."""
    if gpu_capacity() < 1:
        pytest.skip(f"the cluster has no allocatable {GPU_RESOURCE}")
    node_labels = gpu_nodes()[0]["metadata"].get("labels", {})
    resource = copy.deepcopy(example_cnn)
    resource["metadata"] = {"name": f"{example_cnn['metadata']['name']}-gpujob"[:40]}
    runtime = resource["spec"].setdefault("runtime", {})
    runtime.update(
        executionProvider="auto",
        image=GPU_RUNTIME_IMAGE,
        resources={**runtime.get("resources", {}), "gpus": 1, "gpuResourceName": GPU_RESOURCE},
        tolerations=[TOLERATION],
    )
    if PRODUCT_LABEL in node_labels:
        runtime["nodeSelector"] = {PRODUCT_LABEL: node_labels[PRODUCT_LABEL]}
    namespace.apply(resource)
    yield resource
    name = resource["metadata"]["name"]
    namespace("delete", "am", name, "--ignore-not-found", "--wait=false", check=False)


def _job_of(namespace: Kube, name: str, artifact: str) -> dict[str, Any] | None:
    selector = f"kubeaccel.io/model={name},kubeaccel.io/artifact-id={artifact}"
    items = namespace.get("jobs", selector=selector)["items"]
    return items[0] if items else None


def test_a_gpu_models_job_runs_on_the_serving_image_with_its_gpu_and_placement(
    namespace: Kube, gpu_job_model: dict[str, Any]
) -> None:
    name = gpu_job_model["metadata"]["name"]
    spec = AcceleratedModelSpec.model_validate(gpu_job_model["spec"])
    artifact = artifact_id(spec)

    def status_artifact() -> str | None:
        obj = namespace.get("acceleratedmodel", name)
        return (obj.get("status") or {}).get("artifactId")

    assert wait_until(f"{name} status.artifactId", status_artifact, SHORT_TIMEOUT) == artifact
    job = wait_until(f"Job of {name}", lambda: _job_of(namespace, name, artifact), SHORT_TIMEOUT)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == GPU_RUNTIME_IMAGE  # the image that will serve it
    assert container["resources"]["limits"][GPU_RESOURCE] in ("1", 1)
    assert pod["tolerations"] == [TOLERATION]
    assert pod.get("nodeSelector") == gpu_job_model["spec"]["runtime"].get("nodeSelector")


def test_the_gpu_artifact_differs_from_the_cpu_artifact_of_the_same_model(
    gpu_job_model: dict[str, Any], example_cnn: dict[str, Any]
) -> None:
    gpu = AcceleratedModelSpec.model_validate(gpu_job_model["spec"])
    cpu = AcceleratedModelSpec.model_validate(example_cnn["spec"])
    assert gpu.source == cpu.source and gpu.optimization == cpu.optimization
    assert artifact_id(gpu) != artifact_id(cpu)
