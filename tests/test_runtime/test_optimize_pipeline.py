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
    # FP16 is only tried for GPU providers.
    assert names == [
        "structured0.5+static-int8", "static-int8", "structured0.5+dynamic-int8",
        "dynamic-int8", "structured0.5", "fp32",
    ]  # fmt: skip
    chosen = [c for c in report["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["config"] == report["chosen"]["config"]
    measured = [c for c in report["candidates"] if c.get("relativeLatency") is not None]
    assert chosen[0]["relativeLatency"] == min(c["relativeLatency"] for c in measured)
    assert chosen[0]["config"] == "fp32" or chosen[0]["relativeLatency"] < 1.0
    assert len(report["summary"]["candidates"]) == 6


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
    assert set(over) == {"static-int8", "dynamic-int8"}


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
