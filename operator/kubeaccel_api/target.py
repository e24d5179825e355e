"""The serving target of a spec: the device and provider its artifact is optimized for.

Candidates are measured, FP16/INT8 chosen and TensorRT engines built on the target, so the
target is part of the artifact id: a GPU and a CPU artifact of the same model differ.
Pure: computed from the spec alone, identically by the operator and the optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubeaccel_api.v1alpha1 import AcceleratedModelSpec, ExecutionProvider, RuntimeSpec

# Set on GPU nodes by NVIDIA's GPU feature discovery (e.g. "NVIDIA-H200").
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


class Device(StrEnum):
    """Where the shards run."""

    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class ServingTarget:
    """Device, execution provider and (when the spec pins one) GPU product of the shards."""

    device: Device
    provider: ExecutionProvider
    gpu_product: str | None = None

    @property
    def is_gpu(self) -> bool:
        """Whether the shards (and so the optimization Job) run on a GPU."""
        return self.device is Device.GPU

    def to_wire(self) -> dict[str, str]:
        """camelCase form, as hashed into the artifact id and written into reports."""
        out = {"device": self.device.value, "provider": self.provider.value}
        if self.gpu_product is not None:
            out["gpuProduct"] = self.gpu_product
        return out

    def describe(self) -> str:
        """One line for logs and messages, e.g. `gpu (tensorrt, NVIDIA-H200)`."""
        if not self.is_gpu:
            return "cpu"
        return f"gpu ({self.provider.value}, {self.gpu_product or 'any GPU product'})"


def _single_value(expressions: Sequence[Mapping[str, Any]]) -> str | None:
    values = [
        e.get("values") or []
        for e in expressions
        if e.get("key") == GPU_PRODUCT_LABEL and e.get("operator") == "In"
    ]
    pinned = {v[0] for v in values if len(v) == 1 and isinstance(v[0], str)}
    return pinned.pop() if len(pinned) == 1 else None


def gpu_product(runtime: RuntimeSpec) -> str | None:
    """The GPU product the shards are pinned to, or None when any GPU may serve them.

    A nodeSelector on `nvidia.com/gpu.product` decides; else required node affinity does
    when every one of its (ORed) terms pins the same single product with `In`.
    """
    selected = (runtime.node_selector or {}).get(GPU_PRODUCT_LABEL)
    if selected:
        return selected
    node_affinity = (runtime.affinity or {}).get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms") or []
    products = {_single_value(t.get("matchExpressions") or []) for t in terms}
    if len(products) == 1:
        return products.pop()
    return None


def serving_target(spec: AcceleratedModelSpec) -> ServingTarget:
    """The target of a spec: a GPU when it asks for GPUs and a provider other than cpu.

    `auto` with GPUs targets the GPU (it tries TensorRT, then CUDA); without GPUs every
    provider choice serves on the CPU, so they share one CPU target.
    """
    runtime = spec.runtime
    provider = runtime.execution_provider
    if runtime.resources.gpus > 0 and provider is not ExecutionProvider.CPU:
        return ServingTarget(Device.GPU, provider, gpu_product(runtime))
    return ServingTarget(Device.CPU, ExecutionProvider.CPU)
