"""Pure planning: which candidates a spec produces, in which order, with which settings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_runtime.optimize.config import (
    DynamicQuantConfig,
    Precision,
    StaticQuantConfig,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.cpu import SaturationDecision
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.optimize.plan import build_plan

CALIB = Samples({"input": np.zeros((4, 8), np.float32)}, None, "test")
NO_VNNI = SaturationDecision(reduce_range=True, reason="x86 without VNNI")


def _spec(**optimization: Any) -> AcceleratedModelSpec:
    return AcceleratedModelSpec.model_validate(
        {
            "source": {"uri": "file://m.onnx", "allowUnverified": True},
            "optimization": optimization,
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 8]}],
        }
    )


def _names(spec: AcceleratedModelSpec, provider: str = "CPUExecutionProvider") -> list[str]:
    plan = build_plan(spec, provider=provider, saturation=NO_VNNI, calibration=CALIB)
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
        spec, provider="TensorrtExecutionProvider", saturation=NO_VNNI, calibration=CALIB
    ).candidates
    [cpu] = build_plan(
        spec, provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=CALIB
    ).candidates
    trt_config, cpu_config = trt.steps[0].config, cpu.steps[0].config
    assert isinstance(trt_config, StaticQuantConfig) and isinstance(cpu_config, StaticQuantConfig)
    assert trt_config.symmetric and not trt_config.reduce_range
    assert not cpu_config.symmetric and cpu_config.reduce_range


def test_a_fixed_mode_is_planned_on_any_provider():
    spec = _spec(quantization={"mode": "dynamic-int8"})
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        [only] = build_plan(
            spec, provider=provider, saturation=NO_VNNI, calibration=None
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
    plan = build_plan(spec, provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=None)
    [only] = plan.candidates
    assert not plan.auto and only.name == "structured0.3+dynamic-int8"
    assert only.precision is Precision.INT8 and only.pruned
    prune, quant = only.steps
    assert prune.config == StructuredPruneConfig(sparsity=0.3)
    assert quant.config == DynamicQuantConfig(per_channel=False, reduce_range=True)


def test_static_int8_takes_the_calibration_method_and_the_saturation_decision():
    spec = _spec(quantization={"mode": "static-int8", "calibration": {"method": "entropy"}})
    [only] = build_plan(
        spec, provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=CALIB
    ).candidates
    config = only.steps[0].config
    assert isinstance(config, StaticQuantConfig)
    assert config.method.value == "entropy" and config.reduce_range and config.calibration is CALIB


def test_no_optimization_plans_the_original_model():
    [only] = build_plan(
        _spec(), provider="CPUExecutionProvider", saturation=NO_VNNI, calibration=None
    ).candidates
    assert only.name == "fp32" and only.is_baseline


def test_stage_configs_are_frozen():
    config = DynamicQuantConfig()
    with pytest.raises(AttributeError):
        config.per_channel = False  # type: ignore[misc]
