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
    DYNAMIC_DEFAULT_OPS,
    EMBEDDING_MIN_SHARE,
    EMBEDDING_OPS,
    Candidate,
    DynamicQuantConfig,
    Fp16Config,
    Int4WeightConfig,
    MagnitudePruneConfig,
    Precision,
    StaticQuantConfig,
    Step,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.cpu import SaturationDecision
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.optimize.weights import WeightFacts
from kubeaccel_runtime.trt import CPU, CUDA, TENSORRT

BASELINE = "fp32"
INT4 = "int4-weight-only"


@dataclass(frozen=True)
class Plan:
    """Candidates to build, in preference order, and whether auto picks among them."""

    candidates: tuple[Candidate, ...]
    auto: bool
    provider: str
    saturation: SaturationDecision


def _prune_step(pruning: PruningSpec) -> Step:
    if pruning.method is PruningMethod.STRUCTURED:
        return Step(stages.PRUNE_STRUCTURED, StructuredPruneConfig(sparsity=pruning.sparsity))
    return Step(stages.PRUNE_MAGNITUDE, MagnitudePruneConfig(sparsity=pruning.sparsity))


def embeddings_pay_off(facts: WeightFacts) -> bool:
    """Whether embedding tables hold enough of the weights to be worth quantizing."""
    return facts.embedding_share >= EMBEDDING_MIN_SHARE


def _dynamic_ops(facts: WeightFacts) -> tuple[str, ...]:
    return DYNAMIC_DEFAULT_OPS + (EMBEDDING_OPS if embeddings_pay_off(facts) else ())


def _quant_steps(
    mode: QuantizationMode,
    spec: AcceleratedModelSpec,
    saturation: SaturationDecision,
    calibration: Samples | None,
    provider: str,
    facts: WeightFacts,
) -> list[Step]:
    quant = spec.optimization.quantization
    if mode is QuantizationMode.DYNAMIC_INT8:
        return [
            Step(
                stages.QUANTIZE_DYNAMIC,
                DynamicQuantConfig(
                    per_channel=quant.per_channel,
                    reduce_range=saturation.reduce_range,
                    op_types=_dynamic_ops(facts),
                ),
            )
        ]
    if mode is QuantizationMode.STATIC_INT8:
        if calibration is None:
            raise ValueError("static INT8 needs calibration samples")
        method = quant.calibration.method if quant.calibration else CalibrationMethod.MINMAX
        # TensorRT takes symmetric INT8 only; the u8s8 saturation guard is a CPU concern.
        # No op-type list: onnxruntime's QDQ registry, which includes Gather (embeddings).
        tensorrt = provider == TENSORRT
        return [
            Step(
                stages.QUANTIZE_STATIC,
                StaticQuantConfig(
                    calibration=calibration,
                    method=method,
                    per_channel=quant.per_channel,
                    reduce_range=saturation.reduce_range and not tensorrt,
                    symmetric=tensorrt,
                ),
            )
        ]
    if mode is QuantizationMode.FP16:
        return [Step(stages.FP16, Fp16Config(keep_io_types=quant.keep_io_types))]
    return []


def _int4_steps(saturation: SaturationDecision, facts: WeightFacts) -> list[Step]:
    steps = [Step(stages.QUANTIZE_INT4, Int4WeightConfig())]
    if embeddings_pay_off(facts):
        # MatMulNBits covers MatMul only: embedding tables go to INT8 beside it. After the
        # 4-bit pass: the INT8 pre-processing fuses 2-D MatMul+Add into Gemm, which
        # MatMulNBits cannot take.
        steps.append(
            Step(
                stages.QUANTIZE_DYNAMIC,
                DynamicQuantConfig(reduce_range=saturation.reduce_range, op_types=EMBEDDING_OPS),
            )
        )
    return steps


_PRECISION = {
    QuantizationMode.NONE: Precision.FP32,
    QuantizationMode.DYNAMIC_INT8: Precision.INT8,
    QuantizationMode.STATIC_INT8: Precision.INT8,
    QuantizationMode.FP16: Precision.FP16,
}


def _candidate(
    name: str, steps: list[Step], precision: Precision, pruning: PruningSpec | None
) -> Candidate:
    pruned = pruning is not None and pruning.sparsity > 0
    parts: list[str] = []
    all_steps: list[Step] = []
    if pruned:
        assert pruning is not None
        all_steps.append(_prune_step(pruning))
        parts.append(f"{pruning.method.value}{pruning.sparsity:g}")
    if steps:
        all_steps += steps
        parts.append(name)
    return Candidate(
        name="+".join(parts) or BASELINE,
        steps=tuple(all_steps),
        precision=precision if steps else Precision.FP32,
        pruned=pruned,
    )


def candidate(
    mode: QuantizationMode,
    pruning: PruningSpec | None,
    spec: AcceleratedModelSpec,
    saturation: SaturationDecision,
    calibration: Samples | None,
    provider: str,
    facts: WeightFacts,
) -> Candidate:
    """One configuration: optional pruning, then the precision change."""
    steps = _quant_steps(mode, spec, saturation, calibration, provider, facts)
    return _candidate(mode.value, steps, _PRECISION[mode], pruning)


def int4_candidate(
    pruning: PruningSpec | None, saturation: SaturationDecision, facts: WeightFacts
) -> Candidate:
    """4-bit weight-only MatMuls (embedding tables in INT8 where they pay off)."""
    return _candidate(INT4, _int4_steps(saturation, facts), Precision.INT4, pruning)


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
    facts: WeightFacts,
) -> Plan:
    """The candidates a spec asks for (one, or the auto search space)."""
    opt = spec.optimization
    mode = opt.quantization.mode
    if mode is not QuantizationMode.AUTO:
        only = candidate(mode, opt.pruning, spec, saturation, calibration, provider, facts)
        return Plan((only,), auto=False, provider=provider, saturation=saturation)
    prunings: list[PruningSpec | None] = [opt.pruning, None] if opt.pruning else [None]
    found: dict[str, Candidate] = {}
    for each in auto_modes(provider):
        for pruning in prunings:
            c = candidate(each, pruning, spec, saturation, calibration, provider, facts)
            found.setdefault(c.name, c)
        # MatMulNBits is a CPU kernel here; on GPU providers FP16 is the candidate.
        if each is QuantizationMode.DYNAMIC_INT8 and provider == CPU and facts.int4_nodes:
            for pruning in prunings:
                c = int4_candidate(pruning, saturation, facts)
                found.setdefault(c.name, c)
    return Plan(tuple(found.values()), auto=True, provider=provider, saturation=saturation)


def needs_calibration(spec: AcceleratedModelSpec) -> bool:
    """Whether the plan can include static INT8."""
    return spec.optimization.quantization.mode in (
        QuantizationMode.STATIC_INT8,
        QuantizationMode.AUTO,
    )
