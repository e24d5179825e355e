"""The machine the check ran on: Python, onnxruntime build and providers, GPUs and driver."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

from kubeaccel_api.version import __version__

from kubeaccel_runtime import gpu_info
from kubeaccel_runtime.serve.session import cpu_limit

ORT_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime")
LIBRARY_PACKAGES = ("tensorrt-cu13-libs", "nvidia-cudnn-cu13", "nvidia-cublas")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Facts that explain the figures (which build, which GPU, which driver)."""
    import onnxruntime as ort

    gpus, problem = gpu_info.query()
    installed = {name: _version(name) for name in (*ORT_DISTRIBUTIONS, *LIBRARY_PACKAGES)}
    return {
        "kubeaccelVersion": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        # What the process may use (cgroup quota, affinity), as the server sizes its threads.
        "cpus": cpu_limit(),
        "onnxruntime": {
            "version": ort.__version__,
            "distributions": {k: v for k, v in installed.items() if k in ORT_DISTRIBUTIONS},
            # Listed is not usable: onnxruntime-gpu lists CUDA and TensorRT without a GPU.
            "availableProviders": list(ort.get_available_providers()),
            "device": ort.get_device(),
        },
        "libraries": {k: v for k, v in installed.items() if k in LIBRARY_PACKAGES},
        "gpus": [g.to_report() for g in gpus],
        "nvidiaSmiProblem": problem,
    }
