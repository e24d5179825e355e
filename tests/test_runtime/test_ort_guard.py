"""A mixed onnxruntime / onnxruntime-gpu install is refused with a clear fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubeaccel_runtime.ort_guard import (
    ConflictingOnnxRuntime,
    check_single_onnxruntime,
    installed_onnxruntimes,
)


def _fake_dist(site: Path, name: str, version: str = "1.31.1") -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_this_environment_has_exactly_one_onnxruntime() -> None:
    assert len(installed_onnxruntimes()) == 1
    check_single_onnxruntime()


def test_both_cpu_and_gpu_builds_installed_is_refused_with_the_fix(tmp_path: Path) -> None:
    _fake_dist(tmp_path, "onnxruntime")
    _fake_dist(tmp_path, "onnxruntime-gpu")
    assert installed_onnxruntimes([str(tmp_path)]) == ["onnxruntime", "onnxruntime-gpu"]
    with pytest.raises(
        ConflictingOnnxRuntime, match="pip uninstall -y onnxruntime onnxruntime-gpu"
    ):
        check_single_onnxruntime([str(tmp_path)])


def test_one_build_alone_is_accepted(tmp_path: Path) -> None:
    _fake_dist(tmp_path, "onnxruntime-gpu")
    _fake_dist(tmp_path, "numpy", "2.0.0")
    check_single_onnxruntime([str(tmp_path)])
