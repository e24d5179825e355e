"""Load one shard: verify the artifact, create the onnxruntime session, derive its contract.

The provider actually in use is read back from `session.get_providers()`: onnxruntime
lists CUDA/TensorRT even where no GPU works and silently falls back to CPU, so what was
requested says nothing about what runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec, DType, ExecutionProvider, TensorSpec

from kubeaccel_runtime.artifact_manifest import (
    ArtifactInvalid,
    Manifest,
    TensorInfo,
    shard_path,
    verify_artifact,
)
from kubeaccel_runtime.serve.contract import (
    Contract,
    ContractMismatch,
    TensorRule,
    rule_from_signature,
    rules_from_spec,
)
from kubeaccel_runtime.serve.dtypes import FROM_ORT
from kubeaccel_runtime.trt import (
    CPU,
    CUDA,
    TENSORRT,
    provider_specs,
    serving_batches,
    with_engine_cache,
)

log = logging.getLogger("kubeaccel.serve")

PROVIDER_NAME: dict[ExecutionProvider, str] = {
    ExecutionProvider.CPU: CPU,
    ExecutionProvider.CUDA: CUDA,
    ExecutionProvider.TENSORRT: TENSORRT,
}
AUTO_ORDER = (TENSORRT, CUDA, CPU)


class LoadError(RuntimeError):
    """The shard cannot be served; the message says why (digest, provider, contract...).

    `reason` is a CamelCase word for machines (the operator puts it into the resource's
    condition): ArtifactInvalid, ProviderUnavailable or LoadFailed.
    """

    def __init__(self, message: str, reason: str = "LoadFailed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SessionConfig:
    """How to build the onnxruntime session."""

    provider: ExecutionProvider = ExecutionProvider.AUTO
    intra_op_threads: int | None = None  # None: the cgroup CPU limit
    # TensorRT provider options (precision, profile, engine cache); None: TensorRT defaults.
    trt_options: Mapping[str, str] | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A shard ready to serve: its session, contract and where it sits in the pipeline."""

    name: str
    version: str
    shard_index: int
    shard_count: int
    session: Any  # onnxruntime.InferenceSession (untyped library)
    provider: str
    contract: Contract
    # What a caller gets back: this shard's outputs, or the model's when it forwards.
    final_outputs: tuple[TensorRule, ...]
    intra_op_threads: int
    batching_capable: bool

    @property
    def is_last(self) -> bool:
        """Whether this shard produces the model outputs."""
        return self.shard_index == self.shard_count - 1

    def run(self, inputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """One session call (thread-safe; releases the GIL while it runs)."""
        names = [r.name for r in self.contract.outputs]
        values = self.session.run(names, inputs)
        return dict(zip(names, values, strict=True))


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` line ("200000 100000" -> 2.0; "max ..." -> None)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_limit(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Whole CPUs this process may use: the cgroup quota, else the affinity mask size."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    available = available or 1
    try:
        quota = parse_cpu_max(cpu_max.read_text())
    except OSError:
        quota = None
    if quota is None:
        return available
    return max(1, min(available, math.floor(quota)))


def choose_providers(requested: ExecutionProvider, available: Sequence[str]) -> list[str]:
    """Providers to ask for, best first; LoadError if a forced one is not installed."""
    if requested is ExecutionProvider.AUTO:
        return [p for p in AUTO_ORDER if p in available] or [CPU]
    wanted = PROVIDER_NAME[requested]
    if wanted not in available:
        raise LoadError(
            f"executionProvider {requested.value} requires {wanted}, but this onnxruntime "
            f"offers only {', '.join(available)} (install kubeaccel[gpu] on a GPU node)",
            reason="ProviderUnavailable",
        )
    return [wanted] if wanted == CPU else [wanted, CPU]


def create_session(path: Path, cfg: SessionConfig) -> tuple[Any, str, int]:
    """An InferenceSession for `path`; returns (session, provider in use, intra-op threads)."""
    import onnxruntime as ort

    import kubeaccel_runtime.ort_guard  # noqa: F401 (refuses a cpu+gpu mixed install)

    providers = choose_providers(cfg.provider, ort.get_available_providers())
    threads = cfg.intra_op_threads or cpu_limit()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads burn the pod's CPU quota and starve other sessions (TESTING.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(
            str(path), sess_options=opts, providers=provider_specs(providers, cfg.trt_options)
        )
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise LoadError(f"{path}: onnxruntime cannot load the shard: {exc}") from exc
    in_use = session.get_providers()[0]
    # A TensorRT engine built here instead of loaded from the artifact shows as seconds.
    log.info(
        "session created",
        extra={"in_use": in_use, "load_s": round(time.perf_counter() - started, 3)},
    )
    if cfg.provider is not ExecutionProvider.AUTO and in_use != providers[0]:
        raise LoadError(
            f"executionProvider {cfg.provider.value} was requested but onnxruntime fell back "
            f"to {in_use} (no usable GPU or missing CUDA/TensorRT libraries)",
            reason="ProviderUnavailable",
        )
    if in_use != providers[0]:
        log.warning("provider fallback", extra={"requested": providers[0], "in_use": in_use})
    return session, in_use, threads


def signature_rules(args: Sequence[Any], *, reject_non_finite: bool) -> tuple[TensorRule, ...]:
    """Rules from onnxruntime NodeArgs (symbolic dims become -1)."""
    rules = []
    for arg in args:
        dtype = FROM_ORT.get(arg.type)
        if dtype is None:
            raise LoadError(f"tensor {arg.name!r} has unsupported type {arg.type}")
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or [])]
        rules.append(
            rule_from_signature(arg.name, dtype, shape, reject_non_finite=reject_non_finite)
        )
    return tuple(rules)


def _check_boundary(
    kind: str, declared: Sequence[TensorInfo], actual: Sequence[TensorRule]
) -> None:
    """The manifest's shard tensors must be the session's (names, dtypes)."""
    want = {t.name: t.dtype for t in declared}
    got = {r.name: r.dtype for r in actual}
    if want != got:
        raise LoadError(
            f"shard {kind} in the manifest {sorted((n, d.value) for n, d in want.items())} differ "
            f"from the model's {sorted((n, d.value) for n, d in got.items())}"
        )


def _tensor_rules(
    infos: Sequence[TensorInfo], *, reject_non_finite: bool
) -> tuple[TensorRule, ...]:
    return tuple(
        rule_from_signature(t.name, DType(t.dtype), t.shape, reject_non_finite=reject_non_finite)
        for t in infos
    )


def declared_contract(
    manifest: Manifest, spec: AcceleratedModelSpec
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs/outputs contract to enforce: the spec's where written, else the one the
    optimization Job read from the model and recorded in the manifest."""
    recorded = manifest.contract
    inputs = spec.inputs if spec.inputs is not None else (recorded.inputs if recorded else [])
    outputs = spec.outputs if spec.outputs is not None else (recorded.outputs if recorded else [])
    return inputs, outputs


def build_contract(
    manifest: Manifest, spec: AcceleratedModelSpec, shard_index: int, session: Any, forwarding: bool
) -> tuple[Contract, tuple[TensorRule, ...]]:
    """The contract shard `shard_index` enforces, and the outputs its callers receive."""
    shard = manifest.shards[shard_index]
    sig_in = signature_rules(session.get_inputs(), reject_non_finite=shard_index == 0)
    sig_out = signature_rules(session.get_outputs(), reject_non_finite=False)
    _check_boundary("inputs", shard.inputs, sig_in)
    _check_boundary("outputs", shard.outputs, sig_out)
    last = shard_index == len(manifest.shards) - 1
    declared_in, declared_out = declared_contract(manifest, spec)
    try:
        if shard_index == 0:
            inputs = rules_from_spec(declared_in, sig_in, kind="inputs", non_finite_default=True)
        else:
            inputs = sig_in
        outputs = (
            rules_from_spec(declared_out, sig_out, kind="outputs", non_finite_default=False)
            if last
            else sig_out
        )
        # Later shards forward to the end: their callers get the model outputs.
        if forwarding and not last:
            model_out = _tensor_rules(manifest.outputs, reject_non_finite=False)
            final = rules_from_spec(
                declared_out, model_out, kind="outputs", non_finite_default=False
            )
        else:
            final = outputs
    except ContractMismatch as exc:
        raise LoadError(f"contract does not fit the model: {exc}") from None
    contract = Contract(
        inputs=inputs,
        outputs=outputs,
        max_request_bytes=spec.limits.max_request_bytes,
        max_batch=spec.limits.max_batch,
    )
    return contract, final


def with_artifact_engines(
    cfg: SessionConfig,
    artifact_dir: Path,
    manifest: Manifest,
    shard_index: int,
    spec: AcceleratedModelSpec,
) -> SessionConfig:
    """Point TensorRT at the engines the Job built into the artifact, with their options.

    The folder is read-only in a pod; onnxruntime only writes there on a miss (another
    GPU class or image), and then keeps the engine it built in memory. Engines whose
    profile stops below the batches this spec allows (limits raised since the Job ran)
    are not used: TensorRT then builds its own at start.
    """
    cache = manifest.engine_cache
    if cache is None or cfg.trt_options is not None:
        return cfg
    largest = serving_batches(spec)[1]
    if cache.max_batch is not None and largest > cache.max_batch:
        log.warning(
            "artifact TensorRT engines not used: their profile stops below this spec's batches",
            extra={"engine_max_batch": cache.max_batch, "spec_max_batch": largest},
        )
        return cfg
    options = with_engine_cache(cache.shard_options[shard_index], str(artifact_dir / cache.dir))
    return dataclasses.replace(cfg, trt_options=options)


def load_shard(
    artifact_dir: Path,
    shard_index: int,
    *,
    spec: AcceleratedModelSpec | None = None,
    forwarding: bool = False,
    config: SessionConfig | None = None,
) -> LoadedModel:
    """Verify every digest of the artifact, then load shard `shard_index` (LoadError on failure)."""
    try:
        manifest = verify_artifact(artifact_dir)
        path = shard_path(artifact_dir, manifest, shard_index)
    except ArtifactInvalid as exc:
        raise LoadError(str(exc), reason="ArtifactInvalid") from None
    if forwarding and shard_index == len(manifest.shards) - 1:
        raise LoadError(
            f"shard {shard_index} is the last shard; it has no next shard to forward to"
        )
    try:
        spec = spec or manifest.parsed_spec()
    except ValueError as exc:
        raise LoadError(f"the manifest's embedded spec is invalid: {exc}") from None
    cfg = config or SessionConfig(provider=spec.runtime.execution_provider)
    cfg = with_artifact_engines(cfg, artifact_dir, manifest, shard_index, spec)
    session, provider, threads = create_session(path, cfg)
    contract, final = build_contract(manifest, spec, shard_index, session, forwarding)
    batch_ok = all(r.batched for r in (*contract.inputs, *contract.outputs))
    log.info(
        "shard loaded",
        extra={
            "model": manifest.model_name,
            "artifact": manifest.artifact_id,
            "shard": shard_index,
            "provider": provider,
            "threads": threads,
        },
    )
    return LoadedModel(
        name=manifest.model_name,
        version=manifest.artifact_id,
        shard_index=shard_index,
        shard_count=len(manifest.shards),
        session=session,
        provider=provider,
        contract=contract,
        final_outputs=final,
        intra_op_threads=threads,
        batching_capable=batch_ok,
    )
