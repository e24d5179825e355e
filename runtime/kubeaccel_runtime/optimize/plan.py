"""Pure planning: which candidate configurations a spec asks the optimizer to build."""

from __future__ import annotations

from dataclasses import dataclass

from kubeaccel_api.v1alpha1 import (
    AcceleratedModelSpec,
    CalibrationMethod,
    PruningMethod,
    PruningSpec,
    QuantizationMode,
)

from kubeaccel_runtime.optimize import stages
from kubeaccel_runtime.optimize.config import (
    Candidate,
    DynamicQuantConfig,
    Fp16Config,
    MagnitudePruneConfig,
    Precision,
    StaticQuantConfig,
    Step,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.cpu import SaturationDecision
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.trt import CUDA, TENSORRT

BASELINE = "fp32"


@dataclass(frozen=True)
class Plan:
    """Candidates to build, in preference order, and whether the fastest in budget is picked."""

    candidates: tuple[Candidate, ...]
    auto: bool
    provider: str
    saturation: SaturationDecision


def _prune_step(pruning: PruningSpec) -> Step:
    if pruning.method is PruningMethod.STRUCTURED:
        return Step(stages.PRUNE_STRUCTURED, StructuredPruneConfig(sparsity=pruning.sparsity))
    return Step(stages.PRUNE_MAGNITUDE, MagnitudePruneConfig(sparsity=pruning.sparsity))


def _quant_step(
    mode: QuantizationMode,
    spec: AcceleratedModelSpec,
    saturation: SaturationDecision,
    calibration: Samples | None,
    provider: str,
) -> Step | None:
    quant = spec.optimization.quantization
    if mode is QuantizationMode.DYNAMIC_INT8:
        return Step(
            stages.QUANTIZE_DYNAMIC,
            DynamicQuantConfig(per_channel=quant.per_channel, reduce_range=saturation.reduce_range),
        )
    if mode is QuantizationMode.STATIC_INT8:
        if calibration is None:
            raise ValueError("static INT8 needs calibration samples")
        method = quant.calibration.method if quant.calibration else CalibrationMethod.MINMAX
        # TensorRT takes symmetric INT8 only; the u8s8 saturation guard is a CPU concern.
        tensorrt = provider == TENSORRT
        return Step(
            stages.QUANTIZE_STATIC,
            StaticQuantConfig(
                calibration=calibration,
                method=method,
                per_channel=quant.per_channel,
                reduce_range=saturation.reduce_range and not tensorrt,
                symmetric=tensorrt,
            ),
        )
    if mode is QuantizationMode.FP16:
        return Step(stages.FP16, Fp16Config(keep_io_types=quant.keep_io_types))
    return None


_PRECISION = {
    QuantizationMode.NONE: Precision.FP32,
    QuantizationMode.DYNAMIC_INT8: Precision.INT8,
    QuantizationMode.STATIC_INT8: Precision.INT8,
    QuantizationMode.FP16: Precision.FP16,
}


def candidate(
    mode: QuantizationMode,
    pruning: PruningSpec | None,
    spec: AcceleratedModelSpec,
    saturation: SaturationDecision,
    calibration: Samples | None,
    provider: str,
) -> Candidate:
    """One configuration: optional pruning, then the precision change."""
    steps: list[Step] = []
    parts: list[str] = []
    if pruning is not None and pruning.sparsity > 0:
        steps.append(_prune_step(pruning))
        parts.append(f"{pruning.method.value}{pruning.sparsity:g}")
    quant = _quant_step(mode, spec, saturation, calibration, provider)
    if quant is not None:
        steps.append(quant)
        parts.append(mode.value)
    return Candidate(
        name="+".join(parts) or BASELINE,
        steps=tuple(steps),
        precision=_PRECISION[mode],
        pruned=bool(parts) and pruning is not None and pruning.sparsity > 0,
    )


def auto_modes(provider: str) -> list[QuantizationMode]:
    """Auto search order: the precisions that can be faster on the provider, then FP32.

    CPU: static and dynamic INT8 (FP16 only halves the file there). CUDA: FP16; the CUDA
    provider has no kernels for the quantizer's INT8 graphs (DynamicQuantizeLinear,
    QLinear*), which run as FP32 plus Q/DQ nodes or fall back to the CPU. TensorRT: static
    INT8 in symmetric QDQ, which it compiles to INT8 kernels, and FP16.
    """
    if provider == TENSORRT:
        modes = [QuantizationMode.STATIC_INT8, QuantizationMode.FP16]
    elif provider == CUDA:
        modes = [QuantizationMode.FP16]
    else:
        modes = [QuantizationMode.STATIC_INT8, QuantizationMode.DYNAMIC_INT8]
    return [*modes, QuantizationMode.NONE]


def build_plan(
    spec: AcceleratedModelSpec,
    *,
    provider: str,
    saturation: SaturationDecision,
    calibration: Samples | None,
) -> Plan:
    """The candidates a spec asks for (one, or the auto search space)."""
    opt = spec.optimization
    mode = opt.quantization.mode
    if mode is not QuantizationMode.AUTO:
        only = candidate(mode, opt.pruning, spec, saturation, calibration, provider)
        return Plan((only,), auto=False, provider=provider, saturation=saturation)
    prunings: list[PruningSpec | None] = [opt.pruning, None] if opt.pruning else [None]
    found: dict[str, Candidate] = {}
    for each in auto_modes(provider):
        for pruning in prunings:
            c = candidate(each, pruning, spec, saturation, calibration, provider)
            found.setdefault(c.name, c)
    return Plan(tuple(found.values()), auto=True, provider=provider, saturation=saturation)


def needs_calibration(spec: AcceleratedModelSpec) -> bool:
    """Whether the plan can include static INT8."""
    return spec.optimization.quantization.mode in (
        QuantizationMode.STATIC_INT8,
        QuantizationMode.AUTO,
    )
