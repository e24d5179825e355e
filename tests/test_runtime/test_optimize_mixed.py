"""Accuracy-aware mixed precision: per-node sensitivity, then the fewest nodes kept in FP32."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import AccuracyBudget
from kubeaccel_runtime.optimize import mixed, stages
from kubeaccel_runtime.optimize.accuracy import AccuracyFigures, compare, violations
from kubeaccel_runtime.optimize.config import (
    Candidate,
    DynamicQuantConfig,
    Fp16Config,
    Precision,
    StaticQuantConfig,
    Step,
)
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.optimize.graph import op_counts
from onnx import ModelProto

BUDGET = AccuracyBudget(min_top1_agreement=0.95)


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).standard_normal((n, 32))).astype(np.float32)


def _evaluator(model: ModelProto, opt_run: Any, calls: list[bool]) -> mixed.Evaluate:
    x = _inputs(256, 1)
    reference = opt_run(model, {"input": x})

    def evaluate(built: ModelProto, quick: bool) -> AccuracyFigures:
        calls.append(quick)
        n = 64 if quick else len(x)
        return compare([r[:n] for r in reference], opt_run(built, {"input": x[:n]}), None)

    return evaluate


def _candidate(step: Step) -> Candidate:
    return Candidate(step.stage, (step,), Precision.INT8, pruned=False)


def test_the_schedule_grows_slowly_then_faster_and_ends_with_every_ranked_node():
    assert mixed.schedule(0) == []
    assert mixed.schedule(1) == [1]
    assert mixed.schedule(3) == [1, 2, 3]
    assert mixed.schedule(20) == [1, 2, 3, 4, 6, 20]
    assert mixed.schedule(40, max_steps=3) == [1, 2, 40]


def test_dynamic_int8_over_budget_keeps_the_one_node_whose_input_it_crushes(opt_models, opt_run):
    model = opt_models.outlier()
    candidate = _candidate(Step(stages.QUANTIZE_DYNAMIC, DynamicQuantConfig()))
    calls: list[bool] = []
    evaluate = _evaluator(model, opt_run, calls)
    full, _ = stages.run_steps(model, candidate.steps)
    assert violations(evaluate(full, False), BUDGET)  # the plain candidate misses the budget

    outcome = mixed.search(model, candidate, evaluate, BUDGET)
    assert outcome is not None and outcome.model is not None
    assert outcome.violations == [] and outcome.kept_fp32 == ("fc2",)
    assert outcome.candidate.name == "quantize-dynamic+mixed"
    assert outcome.figures is not None and outcome.figures.top1_agreement is not None
    assert outcome.figures.top1_agreement >= 0.95
    ranking = [entry["node"] for entry in outcome.log["sensitivity"]]
    assert ranking[0] == "fc2" and set(ranking) == {"fc2", "fc1", "head_MatMul"}
    assert outcome.log["steps"][-1]["keptFp32"] == ["fc2"]
    # fc1 and the head stay INT8: the model is still mostly quantized.
    assert op_counts(outcome.model)["MatMulInteger"] == 2
    config = outcome.candidate.steps[0].config
    assert isinstance(config, DynamicQuantConfig) and config.nodes_to_exclude == ("fc2",)
    # One quick build per node, then full checks only for the steps tried.
    assert calls.count(True) == 1 + 3 and calls.count(False) == 2


def test_static_int8_finds_two_nodes_that_only_hurt_together(opt_models, opt_run):
    model = opt_models.outlier()
    calib = Samples({"input": _inputs(64, 7)}, None, "test")
    candidate = _candidate(Step(stages.QUANTIZE_STATIC, StaticQuantConfig(calibration=calib)))
    outcome = mixed.search(model, candidate, _evaluator(model, opt_run, []), BUDGET)
    assert outcome is not None and outcome.violations == []
    # fc1's weights (one 1000x column, per-tensor in QDQ) and fc2's input: leaving either one
    # out alone changes nothing, quantizing either one alone breaks the model.
    assert set(outcome.kept_fp32) == {"fc1", "fc2"}
    assert [len(s["keptFp32"]) for s in outcome.log["steps"]] == [1, 2]


def test_a_budget_nothing_can_meet_returns_the_last_try_with_its_violations(opt_models, opt_run):
    model = opt_models.outlier()
    candidate = _candidate(Step(stages.QUANTIZE_DYNAMIC, DynamicQuantConfig()))
    impossible = AccuracyBudget(max_abs_diff=1e-9)
    outcome = mixed.search(
        model, candidate, _evaluator(model, opt_run, []), impossible, max_steps=2
    )
    assert outcome is not None and outcome.violations
    assert len(outcome.log["steps"]) <= 2
    # Never every node: that would be the original model with extra steps.
    assert len(outcome.kept_fp32) < 3


def test_a_candidate_without_quantized_nodes_has_no_mixed_variant(opt_models, opt_run):
    model = opt_models.outlier()
    fp16 = Candidate("fp16", (Step(stages.FP16, Fp16Config()),), Precision.FP16, pruned=False)
    assert mixed.search(model, fp16, _evaluator(model, opt_run, []), BUDGET) is None


@pytest.mark.parametrize("max_nodes", [1, 2])
def test_the_number_of_nodes_examined_is_bounded(opt_models, opt_run, max_nodes):
    model = opt_models.outlier()
    candidate = _candidate(Step(stages.QUANTIZE_DYNAMIC, DynamicQuantConfig()))
    calls: list[bool] = []
    outcome = mixed.search(
        model, candidate, _evaluator(model, opt_run, calls), BUDGET, max_nodes=max_nodes
    )
    assert outcome is not None and outcome.log["nodesExamined"] == max_nodes
    assert calls.count(True) == 1 + max_nodes
