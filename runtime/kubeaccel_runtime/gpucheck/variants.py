"""The measured columns: one example model as FP32 CPU, FP32 CUDA, FP16 CUDA, TensorRT FP16/INT8.

Each variant is built with the optimizer's own planning and passes (so TensorRT INT8 is the
symmetric QDQ the optimization Job would build) and run through the optimizer's sessions.
A variant whose provider does not really run here (onnxruntime falls back to the CPU, or
the session cannot be created) is skipped with the reason; the others are measured in one
interleaved run, then compared with FP32 CPU on the labelled validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeaccel_api.v1alpha1 import AcceleratedModel, GraphOptimizationLevel, QuantizationMode
from onnx import ModelProto

from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.optimize import accuracy, cpu, stages
from kubeaccel_runtime.optimize import data as sample_data
from kubeaccel_runtime.optimize.bench import BenchSettings, Latency, measure
from kubeaccel_runtime.optimize.plan import candidate
from kubeaccel_runtime.optimize.session import Chain, SessionSettings, create, effective_provider
from kubeaccel_runtime.optimize.source import pvc_root, resolve
from kubeaccel_runtime.optimize.weights import weight_facts
from kubeaccel_runtime.trt import CPU, CUDA, TENSORRT, profile_shapes, trt_options

CALIBRATION_SAMPLES = 128
BASELINE = "fp32-cpu"
GPU_BASELINE = "fp32-cuda"


@dataclass(frozen=True)
class Variant:
    """One column: a precision on a provider."""

    name: str
    label: str
    mode: QuantizationMode
    providers: tuple[str, ...]

    @property
    def provider(self) -> str:
        """The provider the variant is about (the first asked for)."""
        return self.providers[0]


VARIANTS: tuple[Variant, ...] = (
    Variant(BASELINE, "FP32 CPU", QuantizationMode.NONE, (CPU,)),
    Variant(GPU_BASELINE, "FP32 CUDA", QuantizationMode.NONE, (CUDA, CPU)),
    Variant("fp16-cuda", "FP16 CUDA", QuantizationMode.FP16, (CUDA, CPU)),
    Variant("fp16-tensorrt", "FP16 TensorRT", QuantizationMode.FP16, (TENSORRT, CUDA, CPU)),
    Variant("int8-tensorrt", "INT8 TensorRT", QuantizationMode.STATIC_INT8, (TENSORRT, CUDA, CPU)),
)


@dataclass(frozen=True)
class Inputs:
    """What one model's measurement needs, read once."""

    resource: AcceleratedModel
    model: ModelProto
    validation: sample_data.Samples
    calibration: sample_data.Samples
    max_batch: int


def local_path(uri: str, root: Path) -> Path:
    """The local file of a file:// (or pvc://) URI of an example, relative to `root`."""
    location = resolve(uri, cwd=root, pvc=pvc_root())
    if location.path is None:
        raise ValueError(f"{uri}: the GPU check reads local files only")
    return location.path


def load_inputs(resource: AcceleratedModel, root: Path, max_batch: int | None) -> Inputs:
    """The example's model, validation split and calibration samples (files under `root`)."""
    spec = resource.spec
    model = onnx_io.load(local_path(spec.source.uri, root))
    inputs = onnx_io.model_inputs(model)
    val = spec.optimization.validation
    if val.uri is None:
        raise ValueError(f"{resource.metadata.name}: the example has no labelled validation file")
    validation = sample_data.read_file(local_path(val.uri, root), inputs, count=val.samples)
    calib = spec.optimization.quantization.calibration
    if calib is not None and calib.uri is not None:
        calibration = sample_data.read_file(
            local_path(calib.uri, root),
            inputs,
            count=min(calib.samples or CALIBRATION_SAMPLES, CALIBRATION_SAMPLES),
        )
    else:  # as the optimization Job does without calibration data: from the contract
        calibration = sample_data.generate(
            inputs, spec.inputs or [], count=CALIBRATION_SAMPLES, seed=val.seed + 1
        )
    return Inputs(resource, model, validation, calibration, max_batch or spec.limits.max_batch)


def build_model(variant: Variant, inputs: Inputs) -> tuple[ModelProto, list[dict[str, Any]]]:
    """The variant's model, built by the optimizer's planning and passes for its provider."""
    saturation = cpu.saturation_guard(cpu.detect())
    plan = candidate(
        variant.mode,
        None,
        inputs.resource.spec,
        saturation,
        inputs.calibration,
        variant.provider,
        weight_facts(inputs.model),
    )
    return stages.run_steps(inputs.model, plan.steps)


def session_settings(
    variant: Variant, model: ModelProto, threads: int, max_batch: int
) -> SessionSettings:
    """The optimizer's session settings; TensorRT gets its precision flags and a batch profile."""
    options = None
    if variant.provider == TENSORRT:
        options = trt_options(
            fp16=variant.mode is QuantizationMode.FP16,
            int8=variant.mode is QuantizationMode.STATIC_INT8,
            profile=profile_shapes(
                onnx_io.model_inputs(model), max_batch=max_batch, opt_batch=max_batch
            ),
        )
    return SessionSettings(
        providers=variant.providers,
        threads=threads,
        level=GraphOptimizationLevel.ALL,
        trt_options=options,
    )


@dataclass
class Prepared:
    """A variant ready to measure, or the reason it is skipped."""

    variant: Variant
    chain: Chain | None = None
    used: str | None = None
    skipped: str | None = None
    build: list[dict[str, Any]] | None = None


def prepare(variant: Variant, inputs: Inputs, threads: int) -> Prepared:
    """Build the variant and its session; skip it when its provider does not really run."""
    import onnxruntime as ort

    offered = ort.get_available_providers()
    if variant.provider not in offered:
        return Prepared(
            variant,
            skipped=f"{variant.provider} is not offered by this onnxruntime build "
            f"(offers {', '.join(offered)})",
        )
    try:
        model, records = build_model(variant, inputs)
    except Exception as exc:  # a pass failing on this model is a finding, not a crash
        return Prepared(variant, skipped=f"building the model failed: {onnx_io.first_line(exc)}")
    settings = session_settings(variant, model, threads, inputs.max_batch)
    try:
        session = create(model, settings)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        return Prepared(variant, skipped=f"session creation failed: {onnx_io.first_line(exc)}")
    used = effective_provider(session)
    if used != variant.provider:
        return Prepared(
            variant,
            used=used,
            skipped=f"{variant.provider} is not usable here: onnxruntime runs it on {used}",
        )
    chain = Chain([session], [o.name for o in session.get_outputs()])
    return Prepared(variant, chain=chain, used=used, build=records)


def _ratio(base: Latency | None, other: Latency) -> float | None:
    if base is None or other.p50_ms <= 0:
        return None
    return round(base.p50_ms / other.p50_ms, 3)


def measure_model(
    inputs: Inputs,
    *,
    threads: int,
    bench: BenchSettings,
    variants: Sequence[Variant] = VARIANTS,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every variant of one model: interleaved latency at batch 1 and max batch, accuracy."""
    prepared = []
    for variant in variants:
        if on_step:
            on_step(f"{inputs.resource.metadata.name}: {variant.label}")
        prepared.append(prepare(variant, inputs, threads))
    chains = {p.variant.name: p.chain for p in prepared if p.chain is not None}
    batches = sorted({1, inputs.max_batch})
    feeds = {b: inputs.validation.first_batch(b) for b in batches}
    timings = measure(chains, feeds, bench)
    reference = None
    if BASELINE in chains:
        reference = accuracy.run_all(chains[BASELINE], inputs.validation, inputs.max_batch)
    big = max(batches)
    rows: list[dict[str, Any]] = []
    for p in prepared:
        row: dict[str, Any] = {
            "variant": p.variant.name,
            "label": p.variant.label,
            "provider": p.variant.provider,
            "providerUsed": p.used,
            "status": "skipped" if p.skipped else "measured",
        }
        if p.skipped:
            row["reason"] = p.skipped
            rows.append(row)
            continue
        lat = timings[p.variant.name]
        cpu_lat = timings.get(BASELINE, {})
        cuda_lat = timings.get(GPU_BASELINE, {})
        row["latency"] = {"batch1": lat[1].to_report(), "maxBatch": lat[big].to_report()}
        row["speedupVsFp32Cpu"] = {
            "batch1": _ratio(cpu_lat.get(1), lat[1]),
            "maxBatch": _ratio(cpu_lat.get(big), lat[big]),
        }
        row["speedupVsFp32Cuda"] = {
            "batch1": _ratio(cuda_lat.get(1), lat[1]),
            "maxBatch": _ratio(cuda_lat.get(big), lat[big]),
        }
        if reference is not None:
            outputs = accuracy.run_all(chains[p.variant.name], inputs.validation, inputs.max_batch)
            figures = accuracy.compare(reference, outputs, inputs.validation.labels)
            row["accuracy"] = figures.to_report()
        rows.append(row)
    return {
        "model": inputs.resource.metadata.name,
        "batches": batches,
        "maxBatch": big,
        "validationSamples": inputs.validation.count,
        "iterations": bench.iterations,
        "warmup": bench.warmup,
        "threads": threads,
        "interleaved": True,
        "variants": rows,
    }
