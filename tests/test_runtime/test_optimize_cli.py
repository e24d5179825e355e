"""`kubeaccel optimize` end to end: exit codes, output, termination log, chart."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner
from kubeaccel_runtime.cli import main
from kubeaccel_runtime.termination import TERMINATION_LIMIT, compact

FAST = ["--threads", "1", "--bench-iterations", "3", "--no-rss"]


def _invoke(tmp_path: Path, *args: str) -> tuple[int, str, str, dict[str, object] | None]:
    log = tmp_path / "termination-log"
    runner = CliRunner()
    result = runner.invoke(
        main, list(args), env={"KUBEACCEL_TERMINATION_LOG": str(log)}, catch_exceptions=False
    )
    summary = json.loads(log.read_text()) if log.exists() else None
    return result.exit_code, result.stdout, result.stderr, summary


def _spec(tmp_path: Path, model, writer, **kw):  # type: ignore[no-untyped-def]
    blob = model.SerializeToString()
    (tmp_path / "model.onnx").write_bytes(blob)
    sha = kw.pop("sha256", hashlib.sha256(blob).hexdigest())
    return writer(tmp_path, "model.onnx", sha, **kw)


def test_optimize_writes_the_artifact_prints_its_path_and_the_summary(
    tmp_path, opt_models, opt_spec_writer, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = _spec(
        tmp_path,
        opt_models.cnn(),
        opt_spec_writer,
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
        optimization={
            "quantization": {"mode": "static-int8", "calibration": {"samples": 16}},
            "partition": {"shards": 2},
        },
    )
    png = tmp_path / "chart.png"
    code, out, err, summary = _invoke(
        tmp_path, "optimize", "--spec", str(spec), "--out", "arts", "--report-png", str(png), *FAST
    )
    assert code == 0, err
    artifact = Path(out.strip().splitlines()[-1])
    assert artifact.parent == Path("arts") and (tmp_path / artifact / "manifest.json").exists()
    assert "✓ candidate static-int8: in budget" in err
    assert "speedup (batch 1)" in err
    assert summary is not None and summary["artifactId"] == artifact.name
    assert (
        summary["chosen"] == "static-int8"
        and summary["executionProvider"] == "CPUExecutionProvider"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Another process (the server) verifies and loads it without torch.
    code_check = (
        "import sys, numpy as np, onnxruntime as ort; from pathlib import Path;"
        "from kubeaccel_runtime.artifact_manifest import verify_artifact;"
        f"d = Path({str(tmp_path / artifact)!r}); m = verify_artifact(d);"
        "v = {'input': np.zeros((2, 1, 8, 8), np.float32)};"
        "[v.update(zip([o.name for o in s.get_outputs()], s.run(None, {i.name: v[i.name] for i in s.get_inputs()})))"
        " for s in [ort.InferenceSession(str(d / sh.file), providers=['CPUExecutionProvider']) for sh in m.shards]];"
        "print(v['logits'].shape, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code_check], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "(2, 10) False"


def test_a_second_run_reports_the_existing_artifact(
    tmp_path, opt_models, opt_spec_writer, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, opt_models.mlp(), opt_spec_writer)
    out_dir = str(tmp_path / "arts")
    assert _invoke(tmp_path, "optimize", "--spec", str(spec), "--out", out_dir, *FAST)[0] == 0
    code, _, err, _ = _invoke(tmp_path, "optimize", "--spec", str(spec), "--out", out_dir, *FAST)
    assert code == 0 and "already exists and verifies; nothing to do" in err


def test_failures_exit_1_with_the_reason_and_write_the_error_to_the_termination_log(
    tmp_path, opt_models, opt_spec_writer, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, opt_models.mlp(), opt_spec_writer, sha256="f" * 64)
    code, out, err, summary = _invoke(
        tmp_path, "optimize", "--spec", str(spec), "--out", str(tmp_path / "arts"), *FAST
    )
    assert code == 1 and out == ""
    assert "optimize failed (DigestMismatch)" in err and "sha256 mismatch" in err
    assert summary is not None and summary["reason"] == "DigestMismatch"
    assert "spec says ffff" in str(summary["error"])
    assert not (tmp_path / "arts").exists()


def test_an_invalid_spec_file_exits_1_with_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kubeaccel.io/v1alpha1\nkind: AcceleratedModel\nmetadata: {name: x}\nspec: {source: {uri: 'file://m.onnx'}, optimization: {partition: {shards: 0}}}\n"
    )
    code, _, err, summary = _invoke(
        tmp_path, "optimize", "--spec", str(bad), "--out", str(tmp_path / "o")
    )
    assert code == 1 and "invalid spec" in err
    assert "spec.source.sha256: is required unless allowUnverified is true" in err
    assert "spec.optimization.partition.shards: Input should be greater than or equal to 1" in err
    assert summary is not None and summary["reason"] == "InvalidSpec"


def test_the_termination_summary_fits_in_kubernetes_4096_bytes():
    big = {"artifactId": "x", "candidates": [{"config": "c" * 100}] * 100}
    text = compact(big)
    assert len(text.encode()) <= TERMINATION_LIMIT and json.loads(text) == {"artifactId": "x"}


def test_the_contract_goes_after_the_candidates_when_the_summary_is_too_long():
    contract = {"inputs": [{"name": "x" * 200, "dtype": "float32", "shape": [-1]}] * 30}
    big = {"artifactId": "x", "candidates": [{"config": "c" * 100}] * 10, "contract": contract}
    assert json.loads(compact(big)) == {"artifactId": "x"}
    small = {"artifactId": "x", "candidates": [{"config": "c" * 100}] * 50, "contract": {"a": 1}}
    assert json.loads(compact(small)) == {"artifactId": "x", "contract": {"a": 1}}


def test_the_report_warns_when_the_validation_data_cannot_resolve_the_budget(
    tmp_path, opt_models, opt_spec_writer, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    model = opt_models.mlp()
    x = np.random.default_rng(2).standard_normal((30, 64)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.savez(tmp_path / "val.npz", input=x, labels=session.run(None, {"input": x})[0].argmax(1))
    spec = _spec(
        tmp_path,
        model,
        opt_spec_writer,
        optimization={
            "quantization": {"mode": "dynamic-int8"},
            "validation": {"uri": "file://val.npz"},
            "accuracyBudget": {"maxAccuracyDrop": 0.01},
        },
    )
    code, _, err, summary = _invoke(
        tmp_path, "optimize", "--spec", str(spec), "--out", "arts", *FAST
    )
    assert code == 0, err
    assert "validation samples" in err and "accuracy drop" in err
    assert "⚠ accuracy gate: the validation data cannot resolve the budget" in err
    assert "on 30 samples cannot resolve maxAccuracyDrop 0.01" in err
    assert summary is not None and summary["gate"]["resolved"] is False
    assert summary["gate"]["samples"] == 30


def test_a_summary_too_big_for_the_termination_log_keeps_the_gate():
    gate = {"samples": 40, "resolved": False, "message": "m" * 300}
    big = {"artifactId": "x", "gate": gate, "candidates": [{"config": "c" * 100}] * 100}
    assert json.loads(compact(big)) == {"artifactId": "x", "gate": gate}
