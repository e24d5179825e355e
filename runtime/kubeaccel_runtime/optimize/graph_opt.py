"""Offline onnxruntime graph optimization: keep the pre-optimized model when it loads faster.

Offline optimization is capped at EXTENDED: the ALL level adds layout transforms (NCHWc)
tied to the CPU that ran them, which onnxruntime documents as unsafe to save and move. The
serving session still applies the spec's level online; on a pre-optimized model that work is
already done. For GPU providers only BASIC (provider-independent) rewrites are saved.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort
from kubeaccel_api.v1alpha1 import GraphOptimizationLevel
from onnx import ModelProto

from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.optimize.config import GraphOptConfig, StageOutput
from kubeaccel_runtime.optimize.errors import UnsupportedModel
from kubeaccel_runtime.optimize.session import SessionSettings, session_options
from kubeaccel_runtime.trt import CPU, CUDA, TENSORRT

# Keep the pre-optimized graph only for a clear load-time gain, not timer noise.
LOAD_GAIN = 0.9
SIZE_TOLERANCE = 1.05
_ORDER = [
    GraphOptimizationLevel.DISABLED,
    GraphOptimizationLevel.BASIC,
    GraphOptimizationLevel.EXTENDED,
    GraphOptimizationLevel.ALL,
]


def offline_level(level: GraphOptimizationLevel, provider: str) -> GraphOptimizationLevel:
    """The highest level that is safe to save for this provider."""
    cap = GraphOptimizationLevel.EXTENDED if provider == CPU else GraphOptimizationLevel.BASIC
    return min(level, cap, key=_ORDER.index)


def _load_ms(blob: bytes, settings: SessionSettings, trials: int) -> float:
    times = []
    for _ in range(max(1, trials)):
        start = time.perf_counter()
        ort.InferenceSession(
            blob, sess_options=session_options(settings), providers=list(settings.providers)
        )
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def optimize_graph(model: ModelProto, config: GraphOptConfig) -> StageOutput:
    """Save the onnxruntime-optimized graph when it creates sessions faster than the original."""
    level = offline_level(config.level, config.provider)
    if level is GraphOptimizationLevel.DISABLED:
        return StageOutput(model, {"level": config.level.value, "offline": False})
    # Timing TensorRT sessions would time engine builds; BASIC rewrites are the same for
    # both GPU providers, so TensorRT targets compare load times on CUDA.
    provider = CUDA if config.provider == TENSORRT else config.provider
    providers = tuple(dict.fromkeys((provider, CPU)))
    settings = SessionSettings(providers=providers, threads=1, level=level)
    original = onnx_io.serialize(model)
    with tempfile.TemporaryDirectory(prefix="kubeaccel-go-") as tmp:
        path = Path(tmp, "optimized.onnx")
        opts = session_options(settings)
        opts.optimized_model_filepath = str(path)
        try:
            ort.InferenceSession(original, sess_options=opts, providers=list(settings.providers))
            optimized = onnx.load(str(path))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise UnsupportedModel(f"onnxruntime cannot optimize the model: {exc}") from None
    # Serving applies the spec's level online either way; compare what it would pay at load.
    online = SessionSettings(providers=settings.providers, threads=1, level=config.level)
    before = _load_ms(original, online, config.load_trials)
    after = _load_ms(onnx_io.serialize(optimized), online, config.load_trials)
    size_before, size_after = onnx_io.model_bytes(model), onnx_io.model_bytes(optimized)
    faster = after < LOAD_GAIN * before
    # CPU fusions can constant-fold casts of FP16 weights into FP32 copies: never grow the file.
    not_bigger = size_after <= SIZE_TOLERANCE * size_before
    keep = faster and not_bigger
    notes: dict[str, object] = {
        "level": config.level.value,
        "offlineLevel": level.value,
        "offline": keep,
        "loadMsOriginal": round(before, 2),
        "loadMsOptimized": round(after, 2),
        "nodesOriginal": len(model.graph.node),
        "nodesOptimized": len(optimized.graph.node),
        "bytesOriginal": size_before,
        "bytesOptimized": size_after,
    }
    if not faster:
        notes["why"] = "the pre-optimized graph did not load >10% faster; kept the original"
    elif not not_bigger:
        notes["why"] = f"the pre-optimized graph is larger ({size_after} vs {size_before} bytes)"
    return StageOutput(optimized if keep else model, notes)
