"""Accuracy-aware mixed precision: keep the most sensitive nodes of a quantized candidate in FP32.

When a quantized candidate misses the accuracy budget, each quantizable node's sensitivity is
measured on (a subset of) the validation samples: the candidate is rebuilt with that node
alone quantized, and the output error that causes is its sensitivity. Quantizing one node at
a time, rather than leaving one out at a time, finds nodes that only hurt together: in static
QDQ a tensor stays quantized while any neighbour is, so leaving out one of two culprits
changes nothing. Nodes are then kept in FP32 in order of sensitivity, a few more at each
step, and every step is checked against the whole budget; the search stops at the first step
inside the budget, when the remaining nodes cause no measurable error, or after MAX_STEPS
builds. Every build counts: at most (nodes + MAX_STEPS) of them.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeaccel_api.v1alpha1 import AccuracyBudget
from onnx import ModelProto

from kubeaccel_runtime.optimize import accuracy, stages
from kubeaccel_runtime.optimize.accuracy import AccuracyFigures
from kubeaccel_runtime.optimize.config import (
    Candidate,
    DynamicQuantConfig,
    ExcludableConfig,
    Int4WeightConfig,
    StaticQuantConfig,
    Step,
)
from kubeaccel_runtime.optimize.int4 import int4_nodes
from kubeaccel_runtime.optimize.quantize import pre_processed

SUFFIX = "+mixed"
MAX_NODES = 64
MAX_STEPS = 6
# A node whose own error is below this share of the worst node's is not worth FP32.
NEGLIGIBLE = 0.01
# Static QDQ quantizes these and their neighbours; data-movement ops (Reshape, Transpose...)
# only follow their producers and cost nothing to leave quantized.
STATIC_OPS = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Gather",
    "LayerNormalization",
    "InstanceNormalization",
    "BatchNormalization",
)

# (model, quick) -> figures against the original; quick: on the sensitivity subset only.
Evaluate = Callable[[ModelProto, bool], AccuracyFigures]


@dataclass(frozen=True)
class Site:
    """A node that one quantization step of the candidate can leave in FP32."""

    step: int
    node: str


@dataclass
class Outcome:
    """The mixed-precision candidate: the last step's model, figures and the search log."""

    candidate: Candidate
    model: ModelProto | None
    records: list[dict[str, Any]]
    figures: AccuracyFigures | None
    violations: list[str]
    kept_fp32: tuple[str, ...]
    log: dict[str, Any] = field(default_factory=dict)


def error(figures: AccuracyFigures) -> float:
    """The continuous error that ranks nodes (flips of top-1 are too coarse on few samples)."""
    return figures.mean_rel_error + (figures.non_finite > 0) * 1e6


def _nodes(model: ModelProto, config: ExcludableConfig) -> list[str]:
    """Nodes the step quantizes, by the names its quantizer sees."""
    if isinstance(config, Int4WeightConfig):
        return int4_nodes(model)
    if isinstance(config, DynamicQuantConfig):
        wanted = set(config.op_types)
    else:
        wanted = set(config.op_types or STATIC_OPS)
    # The INT8 quantizers pre-process first, and its fusions rename nodes.
    seen = pre_processed(model, dynamic=isinstance(config, DynamicQuantConfig))
    return [n.name for n in seen.graph.node if n.op_type in wanted and n.name]


def sites(model: ModelProto, steps: tuple[Step, ...]) -> list[Site]:
    """Every (step, node) the candidate's quantization steps could leave in FP32.

    Quantization keeps the names of the nodes it does not touch, so each step's nodes are
    read from the model after the other (pruning) steps only, without quantizing anything.
    """
    found: list[Site] = []
    current = model
    for index, step in enumerate(steps):
        if isinstance(step.config, ExcludableConfig):
            found += [Site(index, name) for name in _nodes(current, step.config)]
        else:
            current = stages.run_stage(step.stage, current, step.config).model
    return found


def only(steps: tuple[Step, ...], site: Site) -> tuple[Step, ...]:
    """The steps with `site` as the only quantized node (other quantization steps dropped)."""
    out: list[Step] = []
    for index, step in enumerate(steps):
        if not isinstance(step.config, ExcludableConfig):
            out.append(step)
        elif index == site.step:
            out.append(
                Step(step.stage, dataclasses.replace(step.config, nodes_to_quantize=(site.node,)))
            )
    return tuple(out)


def with_fp32(steps: tuple[Step, ...], keep: list[Site]) -> tuple[Step, ...]:
    """The steps with `keep` added to each step's nodes_to_exclude."""
    out = list(steps)
    for index, step in enumerate(steps):
        names = tuple(s.node for s in keep if s.step == index)
        if names:
            config = step.config
            assert isinstance(config, ExcludableConfig)
            merged = tuple(dict.fromkeys(config.nodes_to_exclude + names))
            out[index] = Step(step.stage, dataclasses.replace(config, nodes_to_exclude=merged))
    return tuple(out)


def _with_cache(steps: tuple[Step, ...], folder: Path) -> tuple[Step, ...]:
    """Static steps share one calibration per step across the search's many builds."""
    return tuple(
        Step(s.stage, dataclasses.replace(s.config, calibration_cache=folder / f"calib-{i}.json"))
        if isinstance(s.config, StaticQuantConfig) and s.config.calibration_cache is None
        else s
        for i, s in enumerate(steps)
    )


def schedule(count: int, max_steps: int = MAX_STEPS) -> list[int]:
    """How many of the ranked nodes each step keeps in FP32: 1, 2, 3, 4, 6, 8, 12, ... count."""
    sizes: list[int] = []
    k = 1
    while k < count and len(sizes) < max_steps - 1:
        sizes.append(k)
        k = k + 1 if k < 4 else k * 3 // 2
    if count and len(sizes) < max_steps:
        sizes.append(count)
    return sizes


def search(
    model: ModelProto,
    candidate: Candidate,
    evaluate: Evaluate,
    budget: AccuracyBudget,
    *,
    max_nodes: int = MAX_NODES,
    max_steps: int = MAX_STEPS,
) -> Outcome | None:
    """Keep the most sensitive nodes of `candidate` in FP32 until it fits `budget`.

    Returns None when the candidate has no node that can be left in FP32.
    """
    candidates = sites(model, candidate.steps)[:max_nodes]
    if not candidates:
        return None
    name = candidate.name + SUFFIX
    with tempfile.TemporaryDirectory(prefix="kubeaccel-mixed-") as tmp:
        steps = _with_cache(candidate.steps, Path(tmp))

        def quick_error(build_steps: tuple[Step, ...]) -> float:
            built, _ = stages.run_steps(model, build_steps)
            return error(evaluate(built, True))

        full = quick_error(steps)
        sensitivity = sorted(
            ((site, quick_error(only(steps, site))) for site in candidates),
            key=lambda pair: -pair[1],
        )
        worst = sensitivity[0][1]
        # Leaving every node in FP32 would just be the original model with extra steps.
        ranked = [s for s, e in sensitivity if e > NEGLIGIBLE * worst][: len(candidates) - 1]
        log: dict[str, Any] = {
            "error": full,
            "sensitivity": [{"node": s.node, "error": e} for s, e in sensitivity],
            "nodesExamined": len(candidates),
            "steps": [],
        }
        outcome = Outcome(
            Candidate(name, candidate.steps, candidate.precision, candidate.pruned),
            None,
            [],
            None,
            ["no node causes a measurable error on its own"],
            (),
        )
        for count in schedule(len(ranked), max_steps):
            keep = ranked[:count]
            built, records = stages.run_steps(model, with_fp32(steps, keep))
            figures = evaluate(built, False)
            broken = accuracy.violations(figures, budget)
            kept = tuple(s.node for s in keep)
            log["steps"].append(
                {"keptFp32": list(kept), "error": error(figures), "violations": broken}
            )
            outcome = Outcome(
                Candidate(
                    name, with_fp32(candidate.steps, keep), candidate.precision, candidate.pruned
                ),
                built,
                records,
                figures,
                broken,
                kept,
            )
            if not broken:
                break
    outcome.log = log
    return outcome
