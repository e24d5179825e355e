"""The serving target: which specs are optimized for a GPU, and how it keys the artifact id."""

from __future__ import annotations

from typing import Any

import pytest
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.target import GPU_PRODUCT_LABEL, Device, gpu_product, serving_target
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec, ExecutionProvider

BASE: dict[str, Any] = {
    "source": {"uri": "file://m.onnx", "sha256": "ab" * 32},
    "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
}


def spec(**runtime: Any) -> AcceleratedModelSpec:
    return AcceleratedModelSpec.model_validate({**BASE, "runtime": runtime})


def product_affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]
            }
        }
    }


def pin(*values: str, operator: str = "In") -> list[dict[str, Any]]:
    return [{"key": GPU_PRODUCT_LABEL, "operator": operator, "values": list(values)}]


@pytest.mark.parametrize(
    ("runtime", "device", "provider"),
    [
        ({}, Device.CPU, ExecutionProvider.CPU),
        ({"executionProvider": "auto"}, Device.CPU, ExecutionProvider.CPU),
        ({"executionProvider": "cpu", "resources": {"gpus": 2}}, Device.CPU, ExecutionProvider.CPU),
        ({"resources": {"gpus": 1}}, Device.GPU, ExecutionProvider.AUTO),
        (
            {"executionProvider": "cuda", "resources": {"gpus": 1}},
            Device.GPU,
            ExecutionProvider.CUDA,
        ),
        (
            {"executionProvider": "tensorrt", "resources": {"gpus": 4}},
            Device.GPU,
            ExecutionProvider.TENSORRT,
        ),
    ],
)
def test_a_spec_targets_a_gpu_when_it_asks_for_gpus_and_not_for_the_cpu_provider(
    runtime: dict[str, Any], device: Device, provider: ExecutionProvider
) -> None:
    target = serving_target(spec(**runtime))
    assert (target.device, target.provider) == (device, provider)
    assert target.is_gpu is (device is Device.GPU)


@pytest.mark.parametrize(
    ("runtime", "product"),
    [
        ({}, None),
        ({"nodeSelector": {GPU_PRODUCT_LABEL: "NVIDIA-H200"}}, "NVIDIA-H200"),
        ({"nodeSelector": {"pool": "gpu"}}, None),
        ({"affinity": product_affinity(pin("NVIDIA-A100"))}, "NVIDIA-A100"),
        ({"affinity": product_affinity(pin("NVIDIA-A100"), pin("NVIDIA-A100"))}, "NVIDIA-A100"),
        ({"affinity": product_affinity(pin("NVIDIA-A100", "NVIDIA-H100"))}, None),
        ({"affinity": product_affinity(pin("NVIDIA-A100"), pin("NVIDIA-H100"))}, None),
        ({"affinity": product_affinity(pin("NVIDIA-A100", operator="NotIn"))}, None),
        (
            {"affinity": product_affinity([{"key": "zone", "operator": "In", "values": ["a"]}])},
            None,
        ),
        (
            {
                "nodeSelector": {GPU_PRODUCT_LABEL: "NVIDIA-H200"},
                "affinity": product_affinity(pin("NVIDIA-A100")),
            },
            "NVIDIA-H200",
        ),
    ],
)
def test_the_gpu_product_is_read_from_the_node_selection_when_it_pins_one(
    runtime: dict[str, Any], product: str | None
) -> None:
    assert gpu_product(spec(resources={"gpus": 1}, **runtime).runtime) == product


def test_the_target_describes_itself_and_leaves_out_an_unknown_product() -> None:
    pinned = serving_target(
        spec(
            executionProvider="tensorrt",
            resources={"gpus": 1},
            nodeSelector={GPU_PRODUCT_LABEL: "NVIDIA-H200"},
        )
    )
    assert pinned.to_wire() == {
        "device": "gpu",
        "provider": "tensorrt",
        "gpuProduct": "NVIDIA-H200",
    }
    assert pinned.describe() == "gpu (tensorrt, NVIDIA-H200)"
    assert serving_target(spec()).to_wire() == {"device": "cpu", "provider": "cpu"}
    assert serving_target(spec()).describe() == "cpu"


def test_a_gpu_and_a_cpu_artifact_of_the_same_model_differ() -> None:
    assert artifact_id(spec(resources={"gpus": 1})) != artifact_id(spec())


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"executionProvider": "cuda"}, {"executionProvider": "tensorrt"}),
        ({"executionProvider": "auto"}, {"executionProvider": "cuda"}),
        (
            {"nodeSelector": {GPU_PRODUCT_LABEL: "NVIDIA-H100"}},
            {"nodeSelector": {GPU_PRODUCT_LABEL: "NVIDIA-H200"}},
        ),
        ({}, {"nodeSelector": {GPU_PRODUCT_LABEL: "NVIDIA-H200"}}),
    ],
)
def test_each_gpu_provider_and_gpu_product_is_its_own_artifact(
    one: dict[str, Any], other: dict[str, Any]
) -> None:
    first = spec(resources={"gpus": 1}, **one)
    second = spec(resources={"gpus": 1}, **other)
    assert artifact_id(first) != artifact_id(second)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # Same CPU target: provider choices that all serve on the CPU.
        ({}, {"executionProvider": "cpu", "resources": {"gpus": 2}}),
        ({"executionProvider": "auto"}, {"executionProvider": "cpu"}),
        # Same GPU target: count, replicas, image, tolerations, other labels.
        ({"resources": {"gpus": 1}}, {"resources": {"gpus": 2}, "replicas": 3}),
        (
            {"resources": {"gpus": 1}},
            {
                "resources": {"gpus": 1, "cpu": "2", "memory": "4Gi"},
                "image": "reg/rt:gpu",
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "nodeSelector": {"pool": "gpu"},
                "runtimeClassName": "nvidia",
            },
        ),
    ],
)
def test_the_same_target_keeps_the_same_artifact(
    one: dict[str, Any], other: dict[str, Any]
) -> None:
    assert artifact_id(spec(**one)) == artifact_id(spec(**other))
