"""The whole optimization Job on small models: artifacts, auto search, and every failure path."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from kubeaccel_api.v1alpha1 import OptimizationStatus
from kubeaccel_runtime.artifact_manifest import verify_artifact
from kubeaccel_runtime.optimize.bench import BenchSettings
from kubeaccel_runtime.optimize.cpu import CpuFeatures
from kubeaccel_runtime.optimize.errors import (
    BudgetExceeded,
    ContractMismatch,
    DataError,
    DigestMismatch,
    PartitionError,
    UnsupportedModel,
)
from kubeaccel_runtime.optimize.pipeline import RunOptions, optimize_spec, run_optimization
from kubeaccel_runtime.optimize.select import SMALLER, TIE, Scored, pareto
from kubeaccel_runtime.optimize.session import Chain, SessionSettings
from kubeaccel_runtime.specfile import load_one
from onnx import TensorProto, helper

FAST = RunOptions(
    threads=1,
    bench=BenchSettings(iterations=3, warmup=1, profile_runs=1),
    measure_rss=False,
    cpu=CpuFeatures("x86_64", vnni=True, flags_known=True),
)


def _setup(tmp_path: Path, model: onnx.ModelProto, writer: Any, **spec: Any) -> tuple[Any, Path]:
    blob = model.SerializeToString()
    (tmp_path / "model.onnx").write_bytes(blob)
    sha = spec.pop("sha256", hashlib.sha256(blob).hexdigest())
    path = writer(tmp_path, "model.onnx", sha, **spec)
    return load_one(path), tmp_path / "out"


def _run(resource: Any, out: Path, tmp_path: Path, **kw: Any) -> Any:
    options = RunOptions(**{**FAST.__dict__, "cwd": tmp_path, **kw.pop("options", {})})
    return run_optimization(resource, out, options=options, **kw)


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == []


def test_dynamic_int8_mlp_yields_a_verified_smaller_artifact(tmp_path, opt_models, opt_spec_writer):
    resource, out = _setup(
        tmp_path,
        opt_models.mlp(),
        opt_spec_writer,
        optimization={
            "quantization": {"mode": "dynamic-int8"},
            "accuracyBudget": {"minTop1Agreement": 0.8},
        },
    )
    result = _run(resource, out, tmp_path)
    manifest = verify_artifact(result.path)
    assert result.path.parent == out and not result.reused
    assert manifest.model_name == "tiny" and manifest.execution_provider == "CPUExecutionProvider"
    assert [t.name for t in manifest.inputs] == ["input"] and manifest.inputs[0].shape == [-1, 64]
    report = json.loads((result.path / "report.json").read_text())
    assert report["chosen"]["config"] == "dynamic-int8"
    assert report["sizes"]["sizeRatio"] < 0.5
    assert report["accuracy"]["top1Agreement"] >= 0.8
    assert len(report["bottlenecks"]) <= 5 and report["bottlenecks"][0]["opType"]
    assert set(report["latency"]["before"]) == {"batch1", "maxBatch"}
    assert report["latency"]["before"]["maxBatch"]["batch"] == 32
    assert report["hardware"]["int8ReduceRange"]["reduceRange"] is False
    summary = OptimizationStatus.model_validate(report["summary"])
    assert summary.artifact_id == manifest.artifact_id and summary.chosen == "dynamic-int8"
    assert len(json.dumps(report["summary"])) < 4096


def test_the_artifact_runs_in_a_fresh_chain_like_the_optimizer_measured(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.cnn(),
        opt_spec_writer,
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
        optimization={"partition": {"shards": 3, "balance": "compute"}},
    )
    path = optimize_spec(resource, out, options=RunOptions(**{**FAST.__dict__, "cwd": tmp_path}))
    manifest = verify_artifact(path)
    assert [s.file for s in manifest.shards] == ["shard-0.onnx", "shard-1.onnx", "shard-2.onnx"]
    report = json.loads((path / "report.json").read_text())
    assert report["partition"]["costBasis"] == "measured node times"
    models = [onnx.load(str(path / s.file)) for s in manifest.shards]
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    got = Chain.of(models, SessionSettings()).run({"input": x})[0]
    original = Chain.of([opt_models.cnn()], SessionSettings()).run({"input": x})[0]
    assert np.abs(got - original).max() <= 1e-5


def test_rerunning_the_same_spec_is_a_no_op_unless_forced(tmp_path, opt_models, opt_spec_writer):
    resource, out = _setup(tmp_path, opt_models.mlp(), opt_spec_writer)
    first = _run(resource, out, tmp_path)
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    second = _run(resource, out, tmp_path)
    assert second.reused and second.path == first.path
    assert (first.path / "manifest.json").stat().st_mtime_ns == stamp
    third = _run(resource, out, tmp_path, force=True)
    assert not third.reused
    verify_artifact(third.path)
    assert sorted(p.name for p in out.iterdir()) == [first.path.name]


def test_a_tampered_artifact_is_rebuilt_on_the_next_run(tmp_path, opt_models, opt_spec_writer):
    resource, out = _setup(tmp_path, opt_models.mlp(), opt_spec_writer)
    first = _run(resource, out, tmp_path)
    (first.path / "shard-0.onnx").write_bytes(b"garbage")
    again = _run(resource, out, tmp_path)
    assert not again.reused
    verify_artifact(again.path)


def test_auto_search_records_every_candidate_and_never_picks_a_slower_one(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.mlp(hidden=128, weak=64),
        opt_spec_writer,
        optimization={
            "quantization": {"mode": "auto"},
            "pruning": {"sparsity": 0.5, "method": "structured"},
            "accuracyBudget": {"minTop1Agreement": 0.9},
        },
    )
    result = _run(
        resource,
        out,
        tmp_path,
        options={"bench": BenchSettings(iterations=10, warmup=2, profile_runs=1)},
    )
    report = result.report
    names = [c["config"] for c in report["candidates"]]
    # FP16 is only tried for GPU providers; 4-bit where MatMuls have constant weights.
    assert names[:8] == [
        "structured0.5+static-int8", "static-int8", "structured0.5+dynamic-int8",
        "dynamic-int8", "structured0.5+int4-weight-only", "int4-weight-only",
        "structured0.5", "fp32",
    ]  # fmt: skip
    chosen = [c for c in report["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["config"] == report["chosen"]["config"]
    assert report["chosen"]["objective"] == "latency"
    inside = [c for c in report["candidates"] if c["withinBudget"]]
    fastest = min(c["relativeLatency"] for c in inside)
    # Never slower than the fastest beyond the tie margin (a tie goes to the smaller model).
    assert chosen[0]["relativeLatency"] <= fastest * (1 + TIE)
    assert chosen[0]["relativeLatency"] <= 1.0 + TIE
    assert len(report["summary"]["candidates"]) == len(names)


def test_a_candidate_over_budget_is_rejected_and_nothing_is_written(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.mlp(),
        opt_spec_writer,
        optimization={
            "quantization": {"mode": "dynamic-int8"},
            "accuracyBudget": {"maxAbsDiff": 1e-9},
        },
    )
    with pytest.raises(
        BudgetExceeded,
        match=r"dynamic-int8 is outside the accuracy budget on 64 validation samples: maxAbsDiff \S+ > budget 1e-09",
    ):
        _run(resource, out, tmp_path)
    _assert_nothing_written(out)


def test_auto_falls_back_to_the_original_when_nothing_else_fits_the_budget(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.mlp(),
        opt_spec_writer,
        optimization={"quantization": {"mode": "auto"}, "accuracyBudget": {"maxAbsDiff": 1e-9}},
    )
    report = _run(resource, out, tmp_path).report
    assert report["chosen"]["config"] == "fp32"
    over = {c["config"]: c["violations"] for c in report["candidates"] if not c["withinBudget"]}
    quantized = {"static-int8", "dynamic-int8", "int4-weight-only"}
    # Each quantized candidate also tried keeping its most sensitive nodes in FP32.
    assert set(over) == quantized | {f"{name}+mixed" for name in quantized}


def test_a_sha256_mismatch_fails_before_loading_and_writes_nothing(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(tmp_path, opt_models.mlp(), opt_spec_writer, sha256="0" * 64)
    with pytest.raises(DigestMismatch, match="sha256 mismatch: spec says 0000"):
        _run(resource, out, tmp_path)
    _assert_nothing_written(out)


def test_a_corrupt_model_file_is_a_clear_error(tmp_path, opt_spec_writer):
    blob = b"\x08\x07\x12garbage that is not a model" * 10
    (tmp_path / "model.onnx").write_bytes(blob)
    resource = load_one(opt_spec_writer(tmp_path, "model.onnx", hashlib.sha256(blob).hexdigest()))
    with pytest.raises(UnsupportedModel, match="not an ONNX model"):
        _run(resource, tmp_path / "out", tmp_path)
    _assert_nothing_written(tmp_path / "out")


def test_an_op_onnxruntime_cannot_run_is_a_clear_error(tmp_path, opt_spec_writer):
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["input"], ["out"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 64])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=9,
    )
    resource, out = _setup(tmp_path, model, opt_spec_writer)
    with pytest.raises(UnsupportedModel, match=r"onnxruntime cannot run the model: .*Frobnicate"):
        _run(resource, out, tmp_path)
    _assert_nothing_written(out)


def test_an_impossible_partition_is_a_clear_error(tmp_path, opt_models, opt_spec_writer):
    resource, out = _setup(
        tmp_path, opt_models.mlp(), opt_spec_writer, optimization={"partition": {"shards": 9}}
    )
    with pytest.raises(PartitionError, match="cannot split into 9 shards"):
        _run(resource, out, tmp_path)
    _assert_nothing_written(out)


def test_a_contract_that_does_not_match_the_model_is_a_clear_error(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.mlp(),
        opt_spec_writer,
        inputs=[{"name": "pixels", "dtype": "float16", "shape": [-1, 64]}],
    )
    with pytest.raises(ContractMismatch) as info:
        _run(resource, out, tmp_path)
    assert "spec.inputs lacks model input(s): input" in str(info.value)
    assert "spec.inputs[0] (pixels): the model has no such tensor" in str(info.value)
    _assert_nothing_written(out)


def test_labelled_validation_data_gates_on_accuracy(tmp_path, opt_models, opt_spec_writer):
    model = opt_models.mlp()
    x = np.random.default_rng(4).standard_normal((40, 64)).astype(np.float32)
    labels = Chain.of([model], SessionSettings()).run({"input": x})[0].argmax(1)
    labels[:4] = (labels[:4] + 1) % 10  # the original gets 36/40 right
    np.savez(tmp_path / "val.npz", input=x, labels=labels)
    resource, out = _setup(
        tmp_path,
        model,
        opt_spec_writer,
        optimization={
            "quantization": {"mode": "static-int8", "calibration": {"samples": 16}},
            "validation": {"uri": "file://val.npz", "samples": 40},
            "accuracyBudget": {"maxAccuracyDrop": 0.05},
        },
    )
    report = _run(resource, out, tmp_path).report
    assert report["accuracy"]["accuracyBefore"] == pytest.approx(0.9)
    assert report["accuracy"]["accuracyAfter"] >= 0.85
    assert report["accuracy"]["validation"] == "file(val.npz)"


def test_an_accuracy_budget_without_labels_is_a_data_error(tmp_path, opt_models, opt_spec_writer):
    resource, out = _setup(
        tmp_path,
        opt_models.mlp(),
        opt_spec_writer,
        optimization={"accuracyBudget": {"maxAccuracyDrop": 0.01}},
    )
    with pytest.raises(DataError, match="needs labelled validation data"):
        _run(resource, out, tmp_path)
    _assert_nothing_written(out)


def test_peak_rss_and_the_profile_are_measured_in_a_subprocess(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.cnn(),
        opt_spec_writer,
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
    )
    report = _run(resource, out, tmp_path, options={"measure_rss": True}).report
    for side in ("before", "after"):
        figures = report["peakRss"][side]
        assert figures["peakRssBytes"] > figures["sessionRssBytes"] > 0
    assert {b["opType"] for b in report["bottlenecksBefore"]} & {"Conv", "FusedConv", "Gemm"}


def test_a_model_with_external_weight_data_is_loaded_from_next_to_it(
    tmp_path, opt_models, opt_spec_writer
):
    model = opt_models.mlp()
    onnx.save_model(
        model,
        str(tmp_path / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    assert (tmp_path / "model.onnx").stat().st_size < 2000  # weights are in the .data file
    sha = hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()
    resource = load_one(opt_spec_writer(tmp_path, "model.onnx", sha))
    result = _run(resource, tmp_path / "out", tmp_path)
    manifest = verify_artifact(result.path)
    assert manifest.source_sha256 == sha
    assert result.report["sizes"]["bytesBefore"] > 10_000
    data_sha = hashlib.sha256((tmp_path / "model.onnx.data").read_bytes()).hexdigest()
    assert result.report["source"]["externalData"] == {"model.onnx.data": data_sha}


def test_fp16_mode_halves_the_artifact_and_keeps_float32_io(tmp_path, opt_models, opt_spec_writer):
    # NaN/Inf from FP16 overflow is rejected by the gate (test_optimize_accuracy); on the CPU
    # provider onnxruntime computes FP16 graphs in FP32, so it cannot overflow here.
    resource, out = _setup(
        tmp_path,
        opt_models.attention(),
        opt_spec_writer,
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 8, 32]}],
        optimization={"quantization": {"mode": "fp16"}, "accuracyBudget": {"maxAbsDiff": 0.05}},
    )
    result = _run(resource, out, tmp_path)
    manifest = verify_artifact(result.path)
    assert (
        manifest.inputs[0].dtype.value == "float32" and manifest.outputs[0].dtype.value == "float32"
    )
    assert result.report["sizes"]["sizeRatio"] < 0.6
    [stage] = result.report["chosen"]["stages"]
    assert stage["stage"] == "fp16" and "Softmax" in stage["notes"]["blockedOpsPresent"]


def test_torch_sources_without_torch_name_the_extra_to_install(
    tmp_path, opt_spec_writer, monkeypatch
):
    # The table of contents of a TorchScript archive (its contents are never read here).
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:
        archive.writestr("model/code/__torch__.py", "")
        archive.writestr("model/constants.pkl", b"")
    sha = hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    path = opt_spec_writer(tmp_path, "model.pt", sha)
    path.write_text(
        path.read_text().replace(
            "uri: file://model.pt", "uri: file://model.pt\n    format: torchscript"
        )
    )
    resource = load_one(path)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(
        UnsupportedModel, match=r"install the optimize extra: pip install 'kubeaccel\[optimize\]'"
    ):
        _run(resource, tmp_path / "out", tmp_path)


# --------------------------------------------------------------------------- issue 11


def _labelled(tmp_path: Path, model: onnx.ModelProto, count: int, wrong: int) -> None:
    """val.npz with `count` samples the original gets right but for `wrong` of them."""
    x = np.random.default_rng(4).standard_normal((count, 64)).astype(np.float32)
    labels = Chain.of([model], SessionSettings()).run({"input": x})[0].argmax(1)
    labels[:wrong] = (labels[:wrong] + 1) % 10
    np.savez(tmp_path / "val.npz", input=x, labels=labels)


def _gated(tmp_path, opt_models, opt_spec_writer, validation, budget):  # type: ignore[no-untyped-def]
    """A dynamic-INT8 run gated on 300 labelled samples (30 of them the original gets wrong)."""
    model = opt_models.mlp()
    _labelled(tmp_path, model, 300, 30)
    resource, out = _setup(
        tmp_path,
        model,
        opt_spec_writer,
        optimization={
            "quantization": {"mode": "dynamic-int8"},
            "validation": {"uri": "file://val.npz", **validation},
            "accuracyBudget": budget,
        },
    )
    return _run(resource, out, tmp_path).report


def test_the_gate_uses_the_whole_validation_file_and_reports_intervals(
    tmp_path, opt_models, opt_spec_writer
):
    # No `samples`: every one of the 300.
    report = _gated(tmp_path, opt_models, opt_spec_writer, {}, {"maxAccuracyDrop": 0.2})
    gate = report["summary"]["gate"]
    assert gate["samples"] == 300 and report["accuracy"]["samples"] == 300
    assert gate["resolved"] is True and "message" not in gate
    drop = gate["accuracyDrop"]
    assert drop["low"] <= drop["value"] <= drop["high"] and drop["high"] < 0.2
    assert report["accuracy"]["gate"] == gate
    status = OptimizationStatus.model_validate(report["summary"])
    assert status.gate is not None and status.gate.accuracy_drop is not None


def test_a_budget_the_samples_cannot_resolve_is_reported_not_hidden(
    tmp_path, opt_models, opt_spec_writer
):
    budget = {"maxAccuracyDrop": 0.01, "minTop1Agreement": 0.5}
    report = _gated(tmp_path, opt_models, opt_spec_writer, {"samples": 40}, budget)
    gate = report["summary"]["gate"]
    assert gate["samples"] == 40 and gate["resolved"] is False
    assert "on 40 samples cannot resolve maxAccuracyDrop 0.01" in gate["message"]
    assert "samples at the observed rates would" in gate["message"]
    assert "minTop1Agreement" not in gate["message"]  # 40 samples do resolve a 0.5 floor


def _objective_run(tmp_path, opt_models, opt_spec_writer, objective):  # type: ignore[no-untyped-def]
    resource, out = _setup(
        tmp_path,
        opt_models.mlp(hidden=128),
        opt_spec_writer,
        optimization={
            "quantization": {"mode": "auto"},
            "objective": objective,
            "accuracyBudget": {"minTop1Agreement": 0.5},
        },
    )
    return _run(
        resource,
        out,
        tmp_path,
        options={"bench": BenchSettings(iterations=5, warmup=1, profile_runs=1)},
    ).report


@pytest.mark.parametrize("objective", ["latency", "throughput", "size"])
def test_auto_picks_the_best_candidate_inside_the_budget_for_each_objective(
    tmp_path, opt_models, opt_spec_writer, objective
):
    report = _objective_run(tmp_path, opt_models, opt_spec_writer, objective)
    inside = [c for c in report["candidates"] if c["withinBudget"]]
    assert {c["config"] for c in inside} >= {"fp32", "dynamic-int8", "int4-weight-only"}
    if objective == "size":
        best = min(inside, key=lambda c: (c["bytes"], c["latency"]["batch1"]["p50Ms"]))
    else:
        # The best timed, unless a clearly smaller candidate is within the tie margin.
        def timed(c: dict[str, Any]) -> float:
            if objective == "latency":
                return float(c["latency"]["batch1"]["p50Ms"])
            return -float(c["throughput"])

        top = min(inside, key=lambda c: (timed(c), c["bytes"]))
        near = [
            c
            for c in inside
            if timed(c) <= timed(top) + abs(timed(top)) * TIE
            and c["bytes"] <= SMALLER * top["bytes"]
        ]
        best = min(near, key=lambda c: c["bytes"]) if near else top
    assert report["chosen"]["config"] == best["config"]
    assert report["summary"]["objective"] == objective
    if objective == "size":
        assert best["config"] == "int4-weight-only"  # 4-bit MatMuls beat any INT8
    # Every candidate shows size, batch-1 latency, max-batch throughput and accuracy...
    for c in inside:
        assert c["bytes"] > 0 and c["latency"]["batch1"]["p50Ms"] > 0 and c["throughput"] > 0
        assert c["accuracy"]["top1Agreement"] is not None
    # ...and the Pareto front is the set no other candidate beats on every axis.
    scored = [
        Scored(
            c["config"],
            c["bytes"],
            c["latency"]["batch1"]["p50Ms"],
            c["throughput"],
            c["accuracy"]["top1Agreement"],
        )
        for c in inside
    ]
    assert {c["config"] for c in inside if c["pareto"]} == pareto(scored)
    assert best["pareto"] or objective != "size"


def test_an_int8_candidate_over_budget_keeps_its_most_sensitive_node_in_fp32(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.outlier(),
        opt_spec_writer,
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 32], "range": {"min": 0}}],
        optimization={
            "quantization": {"mode": "dynamic-int8"},
            "accuracyBudget": {"minTop1Agreement": 0.9},
            "validation": {"samples": 200},
        },
    )
    result = _run(resource, out, tmp_path)
    report = result.report
    assert report["chosen"]["config"] == "dynamic-int8+mixed"
    assert report["chosen"]["keptFp32"] == ["fc2"]
    assert report["summary"]["chosen"] == "dynamic-int8+mixed"
    first, tried = report["candidates"]
    assert first["config"] == "dynamic-int8" and not first["withinBudget"]
    assert tried["withinBudget"] and tried["keptFp32"] == ["fc2"]
    assert tried["mixedPrecision"]["sensitivity"][0]["node"] == "fc2"
    assert tried["stages"][0]["notes"]["keptFp32"] == ["fc2"]
    verify_artifact(result.path)


def test_a_fixed_int8_mode_that_even_mixed_precision_cannot_fit_fails_with_both_figures(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.outlier(),
        opt_spec_writer,
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 32]}],
        optimization={
            "quantization": {"mode": "dynamic-int8"},
            "accuracyBudget": {"maxAbsDiff": 1e-9},
        },
    )
    with pytest.raises(BudgetExceeded) as info:
        _run(resource, out, tmp_path)
    message = str(info.value)
    assert message.startswith("dynamic-int8 is outside the accuracy budget")
    assert "node(s) kept in FP32: maxAbsDiff" in message
    _assert_nothing_written(out)


def test_embedding_tables_are_quantized_in_the_int8_candidates(
    tmp_path, opt_models, opt_spec_writer
):
    resource, out = _setup(
        tmp_path,
        opt_models.embedder(),
        opt_spec_writer,
        inputs=[
            {
                "name": "input_ids",
                "dtype": "int64",
                "shape": [-1, 8],
                "range": {"min": 0, "max": 999},
            }
        ],
        optimization={"quantization": {"mode": "auto"}, "objective": "size"},
    )
    report = _run(resource, out, tmp_path).report
    by_name = {c["config"]: c for c in report["candidates"]}
    dynamic = by_name["dynamic-int8"]
    assert dynamic["stages"][0]["notes"]["opTypes"] == ["MatMul", "Gemm", "Gather"]
    assert dynamic["bytes"] < 0.3 * report["sizes"]["bytesBefore"]
    assert by_name["static-int8"]["bytes"] < 0.35 * report["sizes"]["bytesBefore"]
    int4 = by_name["int4-weight-only"]
    assert [s["stage"] for s in int4["stages"]] == ["quantize-int4", "quantize-dynamic"]
    assert report["sizes"]["sizeRatio"] < 0.3
