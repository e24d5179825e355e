"""The GPU check on a machine without a GPU: arguments, every step, the report, the launcher.

The GPU columns are skipped here, with the reason in the report; the CPU column, the
provider matrix, the GPU-target optimization (flagged as measured on the CPU) and the
served load test all run for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kubeaccel_runtime.gpucheck.cli import main_command, parse_list
from kubeaccel_runtime.gpucheck.report import judge_targets, to_markdown
from kubeaccel_runtime.gpucheck.targets import example, gpu_target

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LAUNCHER = ROOT / "scripts" / "gpu-check"
QUICK = ["--models", "mlp", "--iterations", "3", "--warmup", "1", "--opt-iterations", "3"]
QUICK += ["--duration", "1", "--concurrency", "4", "--threads", "1"]


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main_command, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------- arguments


def test_lists_are_checked_against_what_exists() -> None:
    assert parse_list("mlp, cnn,mlp", ("cnn", "mlp"), "model") == ["mlp", "cnn"]
    with pytest.raises(Exception, match="unknown model resnet; choose from cnn, mlp"):
        parse_list("resnet", ("cnn", "mlp"), "model")
    with pytest.raises(Exception, match=r"unknown step \(none given\)"):
        parse_list(" , ", ("serve",), "step")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Missing option '--out'"),
        (["--out", "{tmp}/o", "--models", "resnet"], "unknown model resnet"),
        (["--out", "{tmp}/o", "--steps", "train"], "unknown step train"),
        (["--out", "{tmp}/file"], "is a file"),
        (["--out", "{tmp}/o", "--examples", "{tmp}/none"], "does not exist"),
        (["--out", "{tmp}/o", "--iterations", "1"], "--iterations"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("x")
    result = _cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_the_gpu_target_of_an_example_asks_for_one_gpu_and_auto() -> None:
    cnn = example(EXAMPLES, "cnn")
    target = gpu_target(cnn)
    assert target.spec.runtime.resources.gpus == 1
    assert target.spec.runtime.execution_provider.value == "auto"
    assert target.spec.optimization.quantization.mode.value == "auto"
    assert target.spec.optimization.pruning == cnn.spec.optimization.pruning
    assert target.spec.source == cnn.spec.source


# --------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    """One real run on this machine (no GPU): exit code, report.json, report.md."""
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run(
        [sys.executable, "-m", "kubeaccel_runtime.gpucheck", "--out", str(out), *QUICK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert (out / "report.json").exists(), proc.stderr[-3000:]
    return (
        proc.returncode,
        json.loads((out / "report.json").read_text()),
        (out / "report.md").read_text(),
    )


@pytest.mark.slow
def test_a_run_without_a_gpu_completes_every_step(cpu_run) -> None:
    code, report, _ = cpu_run
    assert code == 0 and report["errors"] == []
    assert set(report) >= {"environment", "providers", "models", "targets", "optimize", "serve"}
    assert report["environment"]["onnxruntime"]["availableProviders"]


@pytest.mark.slow
def test_the_provider_matrix_shows_what_the_server_gets(cpu_run) -> None:
    rows = {r["executionProvider"]: r for r in cpu_run[1]["providers"]}
    assert rows["cpu"]["inUse"] == rows["auto"]["inUse"] == "CPUExecutionProvider"
    assert rows["cpu"]["sessionProviders"] == ["CPUExecutionProvider"]
    for gpu in ("cuda", "tensorrt"):
        assert rows[gpu]["inUse"] is None
        assert f"executionProvider {gpu} requires" in rows[gpu]["error"]


@pytest.mark.slow
def test_the_cpu_column_is_measured_and_the_gpu_columns_say_why_they_are_skipped(cpu_run) -> None:
    mlp = cpu_run[1]["models"]["mlp"]
    assert mlp["batches"] == [1, 256] and mlp["interleaved"] is True
    variants = {v["variant"]: v for v in mlp["variants"]}
    cpu = variants["fp32-cpu"]
    assert cpu["status"] == "measured"
    assert cpu["latency"]["batch1"]["p50Ms"] > 0 and cpu["latency"]["maxBatch"]["batch"] == 256
    assert cpu["speedupVsFp32Cpu"] == {"batch1": 1.0, "maxBatch": 1.0}
    assert cpu["accuracy"]["accuracyAfter"] > 0.9 and cpu["accuracy"]["top1Agreement"] == 1.0
    for name in ("fp32-cuda", "fp16-cuda", "fp16-tensorrt", "int8-tensorrt"):
        assert variants[name]["status"] == "skipped"
        assert variants[name]["provider"] in variants[name]["reason"]


@pytest.mark.slow
def test_targets_not_measurable_here_say_why(cpu_run) -> None:
    targets = {t["target"].split(":")[0]: t for t in cpu_run[1]["targets"]}
    assert targets["cnn"]["met"] is None and targets["cnn"]["why"] == "model not measured"
    assert all(t["measured"] is None for t in targets.values())


@pytest.mark.slow
def test_the_gpu_target_is_optimized_and_flagged_as_measured_on_the_cpu(cpu_run) -> None:
    mlp = cpu_run[1]["optimize"]["mlp"]
    assert mlp["target"]["device"] == "gpu" and mlp["target"]["provider"] == "auto"
    assert mlp["executionProvider"] == "CPUExecutionProvider"
    assert "the figures describe CPUExecutionProvider" in mlp["target"]["notes"][0]
    assert mlp["engineCache"] is None
    assert {c["config"] for c in mlp["candidates"]} >= {"fp32"}


@pytest.mark.slow
def test_the_optimized_artifact_is_served_under_load(cpu_run) -> None:
    serve = cpu_run[1]["serve"]
    assert serve["error"] is None and serve["concurrency"] == 4
    assert serve["load"]["requests"] > 0 and serve["load"]["errors"] == 0
    assert serve["engineFilesAddedOrRewritten"] == []
    [created] = [e for e in serve["logEvents"]["shard-0"] if e["msg"] == "session created"]
    assert created["in_use"] == "CPUExecutionProvider" and created["load_s"] >= 0


@pytest.mark.slow
def test_the_markdown_report_has_every_section_and_the_skip_reasons(cpu_run) -> None:
    markdown = cpu_run[2]
    for heading in ("## Machine", "## Execution providers", "## Targets", "## Served with"):
        assert heading in markdown
    assert "| mlp | FP32 CPU |" in markdown
    assert "| mlp | FP16 CUDA | skipped |" in markdown
    assert "not measured (model not measured)" in markdown


def test_a_failing_step_is_reported_and_the_rest_still_runs(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(EXAMPLES / "mlp.yaml", examples / "mlp.yaml")  # its model file is not there
    out = tmp_path / "out"
    result = _cli("--out", str(out), "--examples", str(examples), *QUICK, "--steps", "table,serve")
    assert result.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["mlp"] == {"error": "failed"}
    assert report["errors"][0].startswith("table mlp: ")
    assert "serve: no example was optimized" in report["errors"][-1]
    assert report["optimize"]["mlp"]["reason"] == "SourceUnavailable"
    assert "## Steps that failed" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- the report


def _gpu_model(fp32_ms: float, fp16_ms: float) -> dict[str, Any]:
    def measured(name: str, label: str, ms: float, vs_cuda: float) -> dict[str, Any]:
        return {
            "variant": name,
            "label": label,
            "status": "measured",
            "latency": {"batch1": {"p50Ms": ms / 10}, "maxBatch": {"p50Ms": ms}},
            "speedupVsFp32Cpu": {"batch1": 3.0, "maxBatch": 20.0},
            "speedupVsFp32Cuda": {"batch1": 1.0, "maxBatch": vs_cuda},
            "accuracy": {"accuracyAfter": 0.98, "top1Agreement": 0.999, "maxAbsDiff": 0.01},
        }

    return {
        "maxBatch": 64,
        "variants": [
            measured("fp32-cuda", "FP32 CUDA", fp32_ms, 1.0),
            measured("fp16-cuda", "FP16 CUDA", fp16_ms, round(fp32_ms / fp16_ms, 3)),
            {
                "variant": "int8-tensorrt",
                "label": "INT8 TensorRT",
                "status": "skipped",
                "reason": "session creation failed: TensorRT EP could not build engine",
            },
        ],
    }


def test_targets_are_met_missed_or_not_measured_with_the_reason() -> None:
    fp16_skipped = _gpu_model(1.0, 1.0)
    fp16_skipped["variants"][1] = {
        "variant": "fp16-cuda",
        "label": "FP16 CUDA",
        "status": "skipped",
        "reason": "CUDAExecutionProvider is not usable here",
    }
    verdicts = judge_targets({"cnn": _gpu_model(2.0, 1.0), "transformer": _gpu_model(1.2, 1.0)})
    assert [(v["measured"], v["met"]) for v in verdicts] == [(2.0, True), (1.2, False)]
    [cnn, transformer] = judge_targets({"cnn": fp16_skipped, "transformer": {"error": "boom"}})
    assert (
        cnn["met"] is None and cnn["why"] == "FP16 CUDA: CUDAExecutionProvider is not usable here"
    )
    assert transformer["why"] == "boom"


def test_the_markdown_shows_gpu_figures_targets_and_skips() -> None:
    models = {"cnn": _gpu_model(2.0, 1.0)}
    report = {
        "command": "gpu-check --out x",
        "elapsedSeconds": 12.0,
        "startedAt": "2026-01-01T00:00:00+00:00",
        "environment": {
            "kubeaccelVersion": "0.1.0",
            "python": "3.12.3",
            "cpus": 16,
            "onnxruntime": {
                "version": "1.31.1",
                "distributions": {"onnxruntime-gpu": "1.31.1", "onnxruntime": None},
                "availableProviders": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
            },
            "libraries": {"tensorrt-cu13-libs": "10.16.1.11"},
            "gpus": [
                {
                    "name": "NVIDIA H200",
                    "driver": "580.159.03",
                    "memoryMiB": 143771,
                    "computeCapability": "9.0",
                }
            ],
        },
        "models": models,
        "targets": judge_targets(models),
        "optimize": {
            "cnn": {
                "executionProvider": "TensorrtExecutionProvider",
                "chosen": "static-int8",
                "speedup": 4.0,
                "speedupMaxBatch": 6.0,
                "accuracy": {"accuracyBefore": 0.98, "accuracyAfter": 0.975},
                "engineCache": {"files": ["a.engine", "a.profile"], "rebuiltOnReload": 0},
                "candidates": [{"config": "static-int8", "relativeLatency": 0.2}],
            }
        },
        "serve": {
            "shards": 2,
            "concurrency": 64,
            "load": {"rps": 9000.0, "p50_ms": 6.0, "p99_ms": 11.0, "errors": 0},
            "engineFilesAddedOrRewritten": [],
            "logEvents": {
                "shard-0": [
                    {"msg": "session created", "in_use": "TensorrtExecutionProvider", "load_s": 0.4}
                ]
            },
        },
        "errors": [],
    }
    markdown = to_markdown(report)
    assert "| GPU | NVIDIA H200 (143771 MiB, compute 9.0) |" in markdown
    assert "| driver | 580.159.03 |" in markdown
    assert "| cnn | FP16 CUDA | 0.1 / 1 | b64 | 3x / 20x | 2x |" in markdown
    assert "cnn: FP16 CUDA >= 1.5x FP32 CUDA at max batch: 2.0x, met" in markdown
    assert "| cnn | INT8 TensorRT | skipped |" in markdown
    assert "2 files, 0 rebuilt on reload" in markdown
    assert "- shard-0: session on TensorrtExecutionProvider, created in 0.4 s" in markdown
    assert "| 2 | 64 | 9e+03 | 6 | 11 | 0 | 0 |" in markdown
    assert "Steps that failed" not in markdown


# --------------------------------------------------------------------------- the launcher


def _launcher(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(LAUNCHER), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_launcher_explains_itself_and_refuses_a_run_without_out() -> None:
    helped = _launcher("--help")
    assert helped.returncode == 0 and "scripts/gpu-check --out DIR" in helped.stdout
    missing = _launcher("--models", "mlp")
    assert missing.returncode == 2 and "--out DIR is required" in missing.stderr
    wheels = _launcher("--out", "x", "--wheels", "/nonexistent/wheels")
    assert wheels.returncode == 2 and "is not a folder" in wheels.stderr


def test_the_launcher_runs_the_check_in_an_existing_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _launcher(
        "--skip-install", "--venv", sys.prefix, "--out", str(out), "--steps", "providers",
        "--models", "mlp", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["steps"] == ["providers"] and report["providers"]
    assert (out / "report.md").read_text().startswith("# kubeaccel GPU check")


def test_the_launcher_refuses_to_skip_an_install_that_is_not_there(tmp_path: Path) -> None:
    proc = _launcher("--skip-install", "--venv", str(tmp_path / "none"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "no environment at" in proc.stderr


def test_the_launcher_is_executable() -> None:
    assert os.access(LAUNCHER, os.X_OK)
