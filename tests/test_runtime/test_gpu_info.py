"""Reading nvidia-smi: its CSV, and every way it can be missing or fail."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from kubeaccel_runtime.gpu_info import GpuInfo, parse_query, query

H200 = "NVIDIA H200, 580.159.03, 143771, 9.0"


def test_each_csv_line_is_one_gpu() -> None:
    assert parse_query(f"{H200}\nNVIDIA A100-SXM4-80GB, 580.159.03, 81920 MiB, 8.0\n") == [
        GpuInfo("NVIDIA H200", "580.159.03", 143771, "9.0"),
        GpuInfo("NVIDIA A100-SXM4-80GB", "580.159.03", 81920, "8.0"),
    ]


def test_unknown_fields_and_short_or_empty_lines_are_tolerated() -> None:
    assert parse_query("Tesla T4, 470.1, [N/A], [Not Supported]\n\ngarbage\n") == [
        GpuInfo("Tesla T4", "470.1", None, None)
    ]
    assert parse_query("Tesla T4, 470.1\n")[0].compute_capability is None


def _fake_smi(folder: Path, script: str) -> None:
    path = folder / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_query_runs_nvidia_smi_from_the_path(tmp_path, monkeypatch) -> None:
    _fake_smi(tmp_path, f'echo "{H200}"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus, problem = query()
    assert problem is None and gpus[0].to_report() == {
        "name": "NVIDIA H200",
        "driver": "580.159.03",
        "memoryMiB": 143771,
        "computeCapability": "9.0",
    }


def test_an_old_driver_without_compute_cap_is_asked_again_without_it(tmp_path, monkeypatch):
    _fake_smi(
        tmp_path,
        'case "$1" in *compute_cap*) echo "Field compute_cap is not valid" >&2; exit 2;; esac\n'
        'echo "Tesla V100, 450.80, 16160"\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus, problem = query()
    assert problem is None and gpus == [GpuInfo("Tesla V100", "450.80", 16160, None)]


@pytest.mark.parametrize(
    ("script", "why"),
    [
        (
            'echo "NVIDIA-SMI has failed: no driver" >&2; exit 9\n',
            "exited 9: NVIDIA-SMI has failed",
        ),
        ("exit 0\n", "listed no GPU"),
    ],
)
def test_a_failing_nvidia_smi_is_a_reason_not_a_crash(tmp_path, monkeypatch, script, why):
    _fake_smi(tmp_path, script)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus, problem = query()
    assert gpus == [] and problem is not None and why in problem


def test_no_nvidia_smi_is_a_reason(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert query() == ([], "nvidia-smi not found on PATH")
