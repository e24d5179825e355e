"""onnxruntime TensorRT provider options, shared by the optimization Job and the server.

The Job builds each shard's TensorRT engine into the artifact; a shard pod loads it only if
its session asks for exactly the same engine: same model file name and content, same
precision flags, same optimization profile. Both sides take their options from here (the
Job writes them into the manifest, the server reads them back), so they cannot drift.
Pure: no onnxruntime import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kubeaccel_api.v1alpha1 import AcceleratedModelSpec

from kubeaccel_runtime.artifact_manifest import TensorInfo

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Folder of the engine cache inside an artifact directory.
ENGINE_CACHE_DIR = "trt-cache"

ProviderSpec = str | tuple[str, dict[str, str]]


def _shape(name: str, batch: int, dims: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in (batch, *dims))}"


def serving_batches(spec: AcceleratedModelSpec) -> tuple[int, int]:
    """(typical, largest) batch a shard session runs: the profile's opt and max batch.

    One request carries up to limits.maxBatch rows; dynamic batching merges requests up to
    maxBatchSize rows, which is then the typical batch (else single requests are).
    """
    batching = spec.runtime.batching
    largest = spec.limits.max_batch
    if batching.enabled:
        largest = max(largest, batching.max_batch_size)
        return min(batching.max_batch_size, largest), largest
    return 1, largest


def profile_shapes(
    inputs: Sequence[TensorInfo], *, max_batch: int, opt_batch: int | None = None
) -> dict[str, str] | None:
    """Explicit min/opt/max optimization profile over the batch dimension, or None.

    With an explicit profile TensorRT builds one engine for every batch from 1 to
    `max_batch` and never rebuilds at run time. It is only possible when dimension 0 is the
    one dynamic dimension of every input; otherwise TensorRT picks profiles from the shapes
    it sees (and may rebuild when a new shape comes).
    """
    if max_batch < 1 or not inputs:
        return None
    rest: list[tuple[str, list[int]]] = []
    dynamic_batch = False
    for tensor in inputs:
        if not tensor.shape or any(d < 1 for d in tensor.shape[1:]):
            return None
        dynamic_batch = dynamic_batch or tensor.shape[0] < 1
        rest.append((tensor.name, tensor.shape[1:]))
    if not dynamic_batch:
        return None  # static shapes: TensorRT needs no profile
    opt = min(max(1, opt_batch or max_batch), max_batch)
    return {
        "trt_profile_min_shapes": ",".join(_shape(n, 1, d) for n, d in rest),
        "trt_profile_opt_shapes": ",".join(_shape(n, opt, d) for n, d in rest),
        "trt_profile_max_shapes": ",".join(_shape(n, max_batch, d) for n, d in rest),
    }


def trt_options(
    *, fp16: bool = False, int8: bool = False, profile: Mapping[str, str] | None = None
) -> dict[str, str]:
    """TensorRT options for one model: precision flags and the optional profile.

    INT8 must be enabled for QDQ models (TensorRT refuses int8 layers otherwise); FP16
    lets TensorRT run the FP16 weights of an FP16 artifact in half precision.
    """
    out = {"trt_fp16_enable": str(fp16), "trt_int8_enable": str(int8)}
    out.update(profile or {})
    return out


def with_engine_cache(options: Mapping[str, str], cache_dir: str) -> dict[str, str]:
    """The options plus the engine cache at `cache_dir` (read, and written on a miss)."""
    return {**options, "trt_engine_cache_enable": "True", "trt_engine_cache_path": cache_dir}


def provider_specs(
    providers: Sequence[str], options: Mapping[str, str] | None
) -> list[ProviderSpec]:
    """The `providers=` argument of InferenceSession: TensorRT gets its options."""
    return [(p, dict(options)) if p == TENSORRT and options is not None else p for p in providers]
