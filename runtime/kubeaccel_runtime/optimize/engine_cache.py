"""Build the shards' TensorRT engines in the optimization Job, to ship them in the artifact.

Each shard is saved under the file name it has in the artifact and loaded with the
server's own session code and options: onnxruntime keys an engine by the model's file name
and graph, the runtime versions and the GPU's compute capability, so a shard pod on the
same GPU class loads these engines instead of building them. A second load of every shard
must find its engine (no new file): the report records that check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kubeaccel_api.constants import SHARD_FILE_TEMPLATE
from kubeaccel_api.v1alpha1 import ExecutionProvider

from kubeaccel_runtime import gpu_info, onnx_io
from kubeaccel_runtime.artifact_manifest import TensorInfo, sha256_file
from kubeaccel_runtime.optimize.config import Precision
from kubeaccel_runtime.optimize.errors import UnsupportedModel
from kubeaccel_runtime.optimize.partition import Shard
from kubeaccel_runtime.serve.session import LoadError, SessionConfig, create_session
from kubeaccel_runtime.trt import (
    ENGINE_CACHE_DIR,
    TENSORRT,
    profile_shapes,
    trt_options,
    with_engine_cache,
)


@dataclass(frozen=True)
class BuiltEngines:
    """Engine files built for every shard, with the options that load them."""

    folder: Path
    shard_options: list[dict[str, str]]
    files: dict[str, str]
    gpu: str
    compute_capability: str | None
    notes: dict[str, Any] = field(default_factory=dict)


def shard_options(
    shards: Sequence[Shard], precision: Precision, *, opt_batch: int, max_batch: int
) -> list[dict[str, str]]:
    """TensorRT options of every shard: the candidate's precision and the serving profile."""
    return [
        trt_options(
            fp16=precision is Precision.FP16,
            int8=precision is Precision.INT8,
            profile=profile_shapes(s.inputs, max_batch=max_batch, opt_batch=opt_batch),
        )
        for s in shards
    ]


def zero_feeds(inputs: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
    """Batch-1 zeros for every input (dynamic dimensions become 1)."""
    return {
        t.name: np.zeros([d if d > 0 else 1 for d in t.shape], onnx_io.numpy_dtype(t.dtype))
        for t in inputs
    }


def _files(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _load(path: Path, options: dict[str, str], threads: int, provider: ExecutionProvider) -> Any:
    config = SessionConfig(provider=provider, intra_op_threads=threads, trt_options=options)
    try:
        session, in_use, _ = create_session(path, config)
    except LoadError as exc:
        raise UnsupportedModel(f"TensorRT cannot build an engine for {path.name}: {exc}") from None
    if in_use != TENSORRT:
        raise UnsupportedModel(f"{path.name}: onnxruntime fell back to {in_use} from TensorRT")
    return session


def build_engines(
    shards: Sequence[Shard],
    options: Sequence[dict[str, str]],
    work: Path,
    threads: int,
    provider: ExecutionProvider = ExecutionProvider.TENSORRT,
) -> BuiltEngines:
    """Build, then reload, every shard's engine into `<work>/trt-cache`.

    `provider` is the spec's executionProvider, so the sessions ask for the same provider
    list as the shard pods will.
    """
    folder = work / ENGINE_CACHE_DIR
    models = work / "trt-shards"
    folder.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    build_s: list[float] = []
    for shard, opts in zip(shards, options, strict=True):
        path = models / SHARD_FILE_TEMPLATE.format(index=shard.index)
        onnx_io.save(shard.model, path)
        paths.append(path)
        start = time.perf_counter()
        session = _load(path, with_engine_cache(opts, str(folder)), threads, provider)
        # Engines without an explicit profile are built at the first run.
        session.run(None, zero_feeds(shard.inputs))
        build_s.append(round(time.perf_counter() - start, 3))
    built = _files(folder)
    if not any(name.endswith(".engine") for name in built):
        raise UnsupportedModel("TensorRT ran but wrote no engine into the cache folder")
    reload_s: list[float] = []
    for path, shard, opts in zip(paths, shards, options, strict=True):
        start = time.perf_counter()
        _load(path, with_engine_cache(opts, str(folder)), threads, provider).run(
            None, zero_feeds(shard.inputs)
        )
        reload_s.append(round(time.perf_counter() - start, 3))
    after = _files(folder)
    gpus, why = gpu_info.query()
    gpu = gpus[0] if gpus else None
    return BuiltEngines(
        folder=folder,
        shard_options=[dict(o) for o in options],
        files=after,
        gpu=gpu.name if gpu else f"unknown ({why})",
        compute_capability=gpu.compute_capability if gpu else None,
        notes={
            "buildSeconds": build_s,
            "reloadSeconds": reload_s,
            # Files a second load added or rewrote: 0 means the engines were reused.
            "rebuiltOnReload": sum(1 for n, d in after.items() if built.get(n) != d),
        },
    )
