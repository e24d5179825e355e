"""A GPU target is optimized where it will serve: on CPU-only onnxruntime it is refused
(cuda, tensorrt) or flagged (auto), and its artifact is never the CPU artifact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner
from kubeaccel_api.artifact import artifact_id
from kubeaccel_runtime.artifact_manifest import read_manifest
from kubeaccel_runtime.cli import main
from kubeaccel_runtime.optimize.bench import BenchSettings
from kubeaccel_runtime.optimize.cpu import CpuFeatures
from kubeaccel_runtime.optimize.errors import ProviderUnavailable
from kubeaccel_runtime.optimize.pipeline import RunOptions, run_optimization
from kubeaccel_runtime.specfile import load_one

FAST = RunOptions(
    threads=1,
    bench=BenchSettings(iterations=3, warmup=1, profile_runs=1),
    measure_rss=False,
    cpu=CpuFeatures("x86_64", vnni=True, flags_known=True),
)


def _spec(tmp_path: Path, model: onnx.ModelProto, writer: Any, **runtime: Any) -> Path:
    blob = model.SerializeToString()
    (tmp_path / "model.onnx").write_bytes(blob)
    return writer(  # type: ignore[no-any-return]
        tmp_path, "model.onnx", hashlib.sha256(blob).hexdigest(), runtime=runtime
    )


def _run(resource: Any, out: Path, tmp_path: Path) -> Any:
    return run_optimization(resource, out, options=RunOptions(**{**FAST.__dict__, "cwd": tmp_path}))


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_cuda_or_tensorrt_target_is_refused_where_no_gpu_provider_runs_and_nothing_is_written(
    tmp_path, opt_models, opt_spec_writer, provider
):
    spec = _spec(
        tmp_path,
        opt_models.mlp(),
        opt_spec_writer,
        executionProvider=provider,
        resources={"gpus": 1},
    )
    with pytest.raises(ProviderUnavailable) as exc:
        _run(load_one(spec), tmp_path / "out", tmp_path)
    message = str(exc.value)
    assert f"executionProvider {provider}" in message
    assert "optimized where it will serve: on the GPU image, with a GPU" in message
    assert exc.value.reason == "ProviderUnavailable"
    assert not (tmp_path / "out").exists()


def test_the_job_reports_a_refused_gpu_target_in_its_termination_log(
    tmp_path, opt_models, opt_spec_writer, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = _spec(
        tmp_path, opt_models.mlp(), opt_spec_writer, executionProvider="cuda", resources={"gpus": 1}
    )
    log = tmp_path / "termination-log"
    result = CliRunner().invoke(
        main,
        ["optimize", "--spec", str(spec), "--out", str(tmp_path / "arts"), "--no-rss"],
        env={"KUBEACCEL_TERMINATION_LOG": str(log)},
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert "optimize failed (ProviderUnavailable)" in result.stderr
    assert json.loads(log.read_text())["reason"] == "ProviderUnavailable"


def test_an_auto_gpu_target_on_the_cpu_is_optimized_flagged_and_kept_apart_from_the_cpu_artifact(
    tmp_path, opt_models, opt_spec_writer
):
    gpu_spec = load_one(_spec(tmp_path, opt_models.mlp(), opt_spec_writer, resources={"gpus": 1}))
    cpu_spec = load_one(_spec(tmp_path, opt_models.mlp(), opt_spec_writer))
    result = _run(gpu_spec, tmp_path / "out", tmp_path)
    report = result.report
    assert report["target"]["device"] == "gpu" and report["target"]["provider"] == "auto"
    assert report["target"]["providerUsed"] == "CPUExecutionProvider"
    [note] = report["target"]["notes"]
    assert "the figures describe CPUExecutionProvider" in note
    assert report["engineCache"] is None and read_manifest(result.path).engine_cache is None
    assert result.path.name == artifact_id(gpu_spec.spec) != artifact_id(cpu_spec.spec)


def test_a_cpu_target_records_its_target_and_no_note(tmp_path, opt_models, opt_spec_writer):
    resource = load_one(_spec(tmp_path, opt_models.mlp(), opt_spec_writer))
    report = _run(resource, tmp_path / "out", tmp_path).report
    assert report["target"] == {
        "device": "cpu",
        "provider": "cpu",
        "providersRequested": ["CPUExecutionProvider"],
        "providerUsed": "CPUExecutionProvider",
        "notes": [],
    }
