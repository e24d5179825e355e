"""The examples, retargeted at a GPU: what the check optimizes and serves."""

from __future__ import annotations

from pathlib import Path

from kubeaccel_api.v1alpha1 import AcceleratedModel
from kubeaccel_api.validation import parse_resource

from kubeaccel_runtime.specfile import load_one

EXAMPLE_MODELS = ("cnn", "transformer", "mlp")


def example(examples: Path, name: str) -> AcceleratedModel:
    """examples/<name>.yaml as the user would apply it."""
    return load_one(examples / f"{name}.yaml")


def gpu_target(resource: AcceleratedModel) -> AcceleratedModel:
    """The same model served on one GPU with `executionProvider: auto` and `auto` precision.

    auto tries TensorRT, then CUDA (then CPU), and measures the provider's candidates (FP16,
    TensorRT INT8) against FP32 on it; pruning stays allowed where the example asks for it.
    """
    wire = resource.model_dump(by_alias=True, exclude_unset=True, mode="json")
    wire.pop("status", None)
    spec = wire["spec"]
    runtime = spec.setdefault("runtime", {})
    runtime["executionProvider"] = "auto"
    runtime.setdefault("resources", {})["gpus"] = 1
    quantization = spec.setdefault("optimization", {}).setdefault("quantization", {})
    quantization["mode"] = "auto"
    return parse_resource(wire)
