"""Frozen configurations of every optimization stage, and the plan they form."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from kubeaccel_api.v1alpha1 import CalibrationMethod, GraphOptimizationLevel
from onnx import ModelProto

from kubeaccel_runtime.optimize.data import Samples

JsonDict = dict[str, Any]


class Precision(StrEnum):
    """Numeric precision of a candidate."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"


# ConvInteger (what dynamic quantization makes of Conv) is 5-7x slower than FP32 Conv on the
# CPU provider, so dynamic INT8 touches only matrix products unless asked otherwise.
DYNAMIC_DEFAULT_OPS: tuple[str, ...] = ("MatMul", "Gemm")
# Embedding tables (the data input of Gather) are quantized when they hold at least this share
# of a model's float weight bytes: below it the bytes saved do not pay for the added risk.
EMBEDDING_MIN_SHARE = 0.1
EMBEDDING_OPS: tuple[str, ...] = ("Gather",)
PRUNABLE_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
# Ops whose FP16 results overflow or lose too much (exponentials, sums of squares,
# normalizations); they stay FP32 with Casts around them.
FP16_BLOCK_OPS: tuple[str, ...] = (
    "Exp",
    "Pow",
    "Log",
    "Reciprocal",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceMean",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceProd",
)


@dataclass(frozen=True)
class MagnitudePruneConfig:
    """Zero the smallest-magnitude fraction of each weight tensor."""

    sparsity: float
    op_types: tuple[str, ...] = PRUNABLE_OPS


@dataclass(frozen=True)
class StructuredPruneConfig:
    """Remove the lowest-L1 fraction of output channels/rows of each prunable layer."""

    sparsity: float
    min_channels: int = 1


@dataclass(frozen=True)
class DynamicQuantConfig:
    """Dynamic INT8: weights quantized offline, activations at run time."""

    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = DYNAMIC_DEFAULT_OPS
    # Node names left in FP32 (mixed precision), and, when set, the only nodes quantized
    # (per-node sensitivity).
    nodes_to_exclude: tuple[str, ...] = ()
    nodes_to_quantize: tuple[str, ...] | None = None


@dataclass(frozen=True, eq=False)
class StaticQuantConfig:
    """Static INT8 in QDQ format from calibration samples.

    u8 activations and s8 weights by default (what the CPU provider fuses into QLinear
    kernels); `symmetric` makes both s8 with zero points 0, the form TensorRT accepts.
    """

    calibration: Samples
    method: CalibrationMethod = CalibrationMethod.MINMAX
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] | None = None
    symmetric: bool = False
    nodes_to_exclude: tuple[str, ...] = ()
    nodes_to_quantize: tuple[str, ...] | None = None
    # A calibration cache file: when it exists its ranges are reused instead of recalibrating
    # (the mixed-precision search quantizes the same model many times).
    calibration_cache: Path | None = None


@dataclass(frozen=True)
class Int4WeightConfig:
    """4-bit weight-only MatMul (MatMulNBits): blockwise symmetric weights, FP32 activations."""

    block_size: int = 32
    # accuracy_level 4: the CPU kernel quantizes activations to int8 per block and uses
    # integer dot products; weights stay 4-bit in memory either way.
    accuracy_level: int = 4
    nodes_to_exclude: tuple[str, ...] = ()
    nodes_to_quantize: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Fp16Config:
    """FP16 weights and compute, with overflow-prone ops kept in FP32."""

    keep_io_types: bool = True
    op_block_list: tuple[str, ...] = FP16_BLOCK_OPS


@dataclass(frozen=True)
class GraphOptConfig:
    """Offline onnxruntime graph optimization of one model for one execution provider."""

    level: GraphOptimizationLevel
    provider: str = "CPUExecutionProvider"
    load_trials: int = 3


StageConfig = (
    MagnitudePruneConfig
    | StructuredPruneConfig
    | DynamicQuantConfig
    | StaticQuantConfig
    | Int4WeightConfig
    | Fp16Config
    | GraphOptConfig
)
# Stages whose nodes can be left in FP32 one by one (the mixed-precision search).
ExcludableConfig = DynamicQuantConfig | StaticQuantConfig | Int4WeightConfig


@dataclass(frozen=True)
class StageOutput:
    """A stage's result: the new model and what the report records about the stage."""

    model: ModelProto
    notes: JsonDict = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One stage to run, by registered name, with its configuration."""

    stage: str
    config: StageConfig


@dataclass(frozen=True)
class Candidate:
    """A configuration the optimizer builds and measures."""

    name: str
    steps: tuple[Step, ...]
    precision: Precision
    pruned: bool

    @property
    def is_baseline(self) -> bool:
        """The original model, unchanged (always inside any budget)."""
        return not self.steps
