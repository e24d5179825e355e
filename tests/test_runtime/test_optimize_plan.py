"""Pure planning: which candidates a spec produces, in which order, with which settings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_runtime.optimize import stages
from kubeaccel_runtime.optimize.config import (
    DynamicQuantConfig,
    Int4WeightConfig,
    Precision,
    StaticQuantConfig,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.cpu import SaturationDecision
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.optimize.plan import build_plan
from kubeaccel_runtime.optimize.weights import WeightFacts, weight_facts

CALIB = Samples({"input": np.zeros((4, 8), np.float32)}, None, "test")
NO_VNNI = SaturationDecision(reduce_range=True, reason="x86 without VNNI")
# A model with neither embedding tables nor MatMul weights (e.g. a Gemm-only MLP or a CNN).
PLAIN = WeightFacts(float_bytes=1000, embedding_bytes=0, embedding_nodes=(), int4_nodes=())
# A small text model: 70 % of its weights in an embedding table, two MatMuls.
TEXT = WeightFacts(
    float_bytes=1000, embedding_bytes=700, embedding_nodes=("emb",), int4_nodes=("fc1", "fc2")
)


def _spec(**optimization: Any) -> AcceleratedModelSpec:
    return AcceleratedModelSpec.model_validate(
        {
            "source": {"uri": "file://m.onnx", "allowUnverified": True},
            "optimization": optimization,
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 8]}],
        }
    )


def _names(
    spec: AcceleratedModelSpec, provider: str = "CPUExecutionProvider", facts: WeightFacts = PLAIN
) -> list[str]:
    plan = build_plan(spec, provider=provider, saturation=NO_VNNI, calibration=CALIB, facts=facts)
    return [c.name for c in plan.candidates]


def test_auto_on_cpu_tries_static_then_dynamic_int8_then_fp32():
    assert _names(_spec(quantization={"mode": "auto"})) == ["static-int8", "dynamic-int8", "fp32"]


def test_auto_on_cuda_tries_fp16_then_fp32_only():
    names = _names(_spec(quantization={"mode": "auto"}), provider="CUDAExecutionProvider")
    assert names == ["fp16", "fp32"]


def test_auto_on_tensorrt_tries_static_int8_then_fp16_then_fp32():
    names = _names(_spec(quantization={"mode": "auto"}), provider="TensorrtExecutionProvider")
    assert names == ["static-int8", "fp16", "fp32"]


def test_static_int8_for_tensorrt_is_symmetric_and_ignores_the_cpu_saturation_guard():
    spec = _spec(quantization={"mode": "static-int8", "calibration": {"samples": 4}})
    [trt] = build_plan(
        spec,
        provider="TensorrtExecutionProvider",
        saturation=NO_VNNI,
        calibration=CALIB,
        facts=PLAIN,
    ).candidates
    [cpu] = build_plan(
        spec, provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=CALIB, facts=PLAIN
    ).candidates
    trt_config, cpu_config = trt.steps[0].config, cpu.steps[0].config
    assert isinstance(trt_config, StaticQuantConfig) and isinstance(cpu_config, StaticQuantConfig)
    assert trt_config.symmetric and not trt_config.reduce_range
    assert not cpu_config.symmetric and cpu_config.reduce_range


def test_a_fixed_mode_is_planned_on_any_provider():
    spec = _spec(quantization={"mode": "dynamic-int8"})
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        [only] = build_plan(
            spec, provider=provider, saturation=NO_VNNI, calibration=None, facts=PLAIN
        ).candidates
        assert only.name == "dynamic-int8"


def test_auto_with_pruning_tries_each_precision_with_and_without_it():
    spec = _spec(quantization={"mode": "auto"}, pruning={"sparsity": 0.5, "method": "structured"})
    assert _names(spec) == [
        "structured0.5+static-int8", "static-int8", "structured0.5+dynamic-int8",
        "dynamic-int8", "structured0.5", "fp32",
    ]  # fmt: skip


def test_a_fixed_mode_plans_exactly_one_candidate_with_pruning_first():
    spec = _spec(
        quantization={"mode": "dynamic-int8", "perChannel": False},
        pruning={"sparsity": 0.3, "method": "structured"},
    )
    plan = build_plan(
        spec, provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=None, facts=PLAIN
    )
    [only] = plan.candidates
    assert not plan.auto and only.name == "structured0.3+dynamic-int8"
    assert only.precision is Precision.INT8 and only.pruned
    prune, quant = only.steps
    assert prune.config == StructuredPruneConfig(sparsity=0.3)
    assert quant.config == DynamicQuantConfig(per_channel=False, reduce_range=True)


def test_static_int8_takes_the_calibration_method_and_the_saturation_decision():
    spec = _spec(quantization={"mode": "static-int8", "calibration": {"method": "entropy"}})
    [only] = build_plan(
        spec, provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=CALIB, facts=PLAIN
    ).candidates
    config = only.steps[0].config
    assert isinstance(config, StaticQuantConfig)
    assert config.method.value == "entropy" and config.reduce_range and config.calibration is CALIB


def test_no_optimization_plans_the_original_model():
    [only] = build_plan(
        _spec(), provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=None, facts=PLAIN
    ).candidates
    assert only.name == "fp32" and only.is_baseline


def test_stage_configs_are_frozen():
    config = DynamicQuantConfig()
    with pytest.raises(AttributeError):
        config.per_channel = False  # type: ignore[misc]


def test_auto_adds_a_4bit_candidate_when_the_model_has_matmul_weights_on_cpu():
    spec = _spec(quantization={"mode": "auto"})
    facts = WeightFacts(1000, 0, (), ("fc1",))
    assert _names(spec, facts=facts) == ["static-int8", "dynamic-int8", "int4-weight-only", "fp32"]
    gpu = _names(spec, provider="CUDAExecutionProvider", facts=facts)
    assert "int4-weight-only" not in gpu


def test_embedding_tables_are_quantized_only_where_they_hold_enough_of_the_weights():
    spec = _spec(quantization={"mode": "dynamic-int8"})

    def ops(facts: WeightFacts) -> tuple[str, ...]:
        [only] = build_plan(
            spec, provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=None, facts=facts
        ).candidates
        config = only.steps[-1].config
        assert isinstance(config, DynamicQuantConfig)
        return config.op_types

    assert ops(TEXT) == ("MatMul", "Gemm", "Gather")
    assert ops(WeightFacts(1000, 99, ("pos",), ())) == ("MatMul", "Gemm")  # 9.9 %: not worth it
    assert ops(WeightFacts(1000, 100, ("pos",), ())) == ("MatMul", "Gemm", "Gather")


def test_the_4bit_candidate_puts_embedding_tables_in_int8_beside_it():
    plan = build_plan(
        _spec(quantization={"mode": "auto"}),
        provider="CPUExecutionProvider",
        saturation=NO_VNNI,
        calibration=CALIB,
        facts=TEXT,
    )
    int4 = next(c for c in plan.candidates if c.name == "int4-weight-only")
    assert int4.precision is Precision.INT4
    assert [s.stage for s in int4.steps] == [stages.QUANTIZE_INT4, stages.QUANTIZE_DYNAMIC]
    assert int4.steps[0].config == Int4WeightConfig()
    gather = int4.steps[1].config
    assert isinstance(gather, DynamicQuantConfig) and gather.op_types == ("Gather",)


def test_weight_facts_find_embedding_tables_and_4bit_matmuls(opt_models):
    facts = weight_facts(opt_models.embedder())
    assert facts.embedding_nodes == ("embed",)
    assert facts.int4_nodes == ("fc",)
    assert facts.embedding_share > 0.9
    mlp = weight_facts(opt_models.mlp())
    assert mlp.embedding_bytes == 0 and mlp.int4_nodes == ("fc1", "fc2")
