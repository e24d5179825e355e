"""The stage registry: every pass by name, with the config type it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onnx import ModelProto

from kubeaccel_runtime.optimize.config import (
    DynamicQuantConfig,
    Fp16Config,
    GraphOptConfig,
    Int4WeightConfig,
    MagnitudePruneConfig,
    StageConfig,
    StageOutput,
    StaticQuantConfig,
    Step,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.fp16 import convert_fp16
from kubeaccel_runtime.optimize.graph_opt import optimize_graph
from kubeaccel_runtime.optimize.int4 import quantize_int4
from kubeaccel_runtime.optimize.prune import prune_magnitude, prune_structured
from kubeaccel_runtime.optimize.quantize import quantize_dynamic_int8, quantize_static_int8

PRUNE_MAGNITUDE = "prune-magnitude"
PRUNE_STRUCTURED = "prune-structured"
QUANTIZE_DYNAMIC = "quantize-dynamic"
QUANTIZE_STATIC = "quantize-static"
QUANTIZE_INT4 = "quantize-int4"
FP16 = "fp16"
GRAPH_OPTIMIZE = "graph-optimize"


@dataclass(frozen=True)
class Stage:
    """A registered pass: its name, config type and function."""

    name: str
    config_type: type[Any]
    run: Callable[[ModelProto, Any], StageOutput]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(PRUNE_MAGNITUDE, MagnitudePruneConfig, prune_magnitude),
        Stage(PRUNE_STRUCTURED, StructuredPruneConfig, prune_structured),
        Stage(QUANTIZE_DYNAMIC, DynamicQuantConfig, quantize_dynamic_int8),
        Stage(QUANTIZE_STATIC, StaticQuantConfig, quantize_static_int8),
        Stage(QUANTIZE_INT4, Int4WeightConfig, quantize_int4),
        Stage(FP16, Fp16Config, convert_fp16),
        Stage(GRAPH_OPTIMIZE, GraphOptConfig, optimize_graph),
    )
}


def run_stage(name: str, model: ModelProto, config: StageConfig) -> StageOutput:
    """Run one registered stage after checking its config type."""
    stage = STAGES.get(name)
    if stage is None:
        raise KeyError(f"unknown stage {name!r} (known: {', '.join(sorted(STAGES))})")
    if not isinstance(config, stage.config_type):
        raise TypeError(
            f"stage {name} takes {stage.config_type.__name__}, got {type(config).__name__}"
        )
    return stage.run(model, config)


def run_steps(
    model: ModelProto, steps: tuple[Step, ...]
) -> tuple[ModelProto, list[dict[str, Any]]]:
    """Run steps in order; return the final model and each stage's record."""
    records: list[dict[str, Any]] = []
    for step in steps:
        output = run_stage(step.stage, model, step.config)
        model = output.model
        records.append({"stage": step.stage, "notes": output.notes})
    return model, records
