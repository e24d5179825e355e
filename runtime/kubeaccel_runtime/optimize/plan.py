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
from kubeaccel_runtime.optimize.session import GPU_PROVIDERS

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
        return Step(
            stages.QUANTIZE_STATIC,
            StaticQuantConfig(
                calibration=calibration,
                method=method,
                per_channel=quant.per_channel,
                reduce_range=saturation.reduce_range,
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
) -> Candidate:
    """One configuration: optional pruning, then the precision change."""
    steps: list[Step] = []
    parts: list[str] = []
    if pruning is not None and pruning.sparsity > 0:
        steps.append(_prune_step(pruning))
        parts.append(f"{pruning.method.value}{pruning.sparsity:g}")
    quant = _quant_step(mode, spec, saturation, calibration)
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
    """Auto search order: static INT8, dynamic INT8, FP16 (GPU only), FP32."""
    modes = [QuantizationMode.STATIC_INT8, QuantizationMode.DYNAMIC_INT8]
    if provider in GPU_PROVIDERS:
        modes.append(QuantizationMode.FP16)
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
        only = candidate(mode, opt.pruning, spec, saturation, calibration)
        return Plan((only,), auto=False, provider=provider, saturation=saturation)
    prunings: list[PruningSpec | None] = [opt.pruning, None] if opt.pruning else [None]
    found: dict[str, Candidate] = {}
    for each in auto_modes(provider):
        for pruning in prunings:
            c = candidate(each, pruning, spec, saturation, calibration)
            found.setdefault(c.name, c)
    return Plan(tuple(found.values()), auto=True, provider=provider, saturation=saturation)


def needs_calibration(spec: AcceleratedModelSpec) -> bool:
    """Whether the plan can include static INT8."""
    return spec.optimization.quantization.mode in (
        QuantizationMode.STATIC_INT8,
        QuantizationMode.AUTO,
    )
