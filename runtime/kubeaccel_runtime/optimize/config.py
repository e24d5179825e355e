"""Frozen configurations of every optimization stage, and the plan they form."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
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


# ConvInteger (what dynamic quantization makes of Conv) is 5-7x slower than FP32 Conv on the
# CPU provider, so dynamic INT8 touches only matrix products unless asked otherwise.
DYNAMIC_DEFAULT_OPS: tuple[str, ...] = ("MatMul", "Gemm")
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
    | Fp16Config
    | GraphOptConfig
)


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
