"""`kubeaccel validate` and `kubeaccel crd` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

INVALID = Path(__file__).parent / "invalid"
VALID = {
    "apiVersion": "kubeaccel.io/v1alpha1",
    "kind": "AcceleratedModel",
    "metadata": {"name": "ok"},
    "spec": {
        "source": {"uri": "file://m.onnx", "sha256": "0" * 64},
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}],
    },
}


def _kubeaccel(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kubeaccel_runtime.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_validate_accepts_a_valid_file_and_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(VALID))
    result = _kubeaccel("validate", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_validate_prints_each_problem_on_its_own_line_and_exits_one(tmp_path: Path) -> None:
    result = _kubeaccel(
        "validate",
        "-f",
        str(INVALID / "sparsity-too-high.yaml"),
        "-f",
        str(INVALID / "missing-sha256.yaml"),
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "spec.optimization.pruning.sparsity" in lines[0]
    assert "spec.source.sha256: is required unless allowUnverified is true" in lines[1]


def test_validate_reports_unreadable_and_malformed_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    result = _kubeaccel("validate", "-f", str(tmp_path / "absent.yaml"), "-f", str(broken))
    assert result.returncode == 1
    assert "cannot read file" in result.stderr and "not valid YAML" in result.stderr


def test_validate_checks_every_document_of_a_multi_document_file(tmp_path: Path) -> None:
    bad = {**VALID, "metadata": {"name": "Bad_Name"}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([VALID, bad]))
    result = _kubeaccel("validate", "-f", str(path))
    assert result.returncode == 1
    assert "[1]: metadata.name" in result.stderr


def test_crd_prints_the_generated_definition() -> None:
    result = _kubeaccel("crd")
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["kind"] == "CustomResourceDefinition"


def test_crd_write_writes_both_copies_under_the_root(tmp_path: Path) -> None:
    result = _kubeaccel("crd", "--write", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "crds" / "acceleratedmodels.kubeaccel.io.yaml").is_file()
    assert (tmp_path / "charts" / "kubeaccel" / "templates" / "crd.yaml").is_file()


def test_validate_accepts_every_example_in_one_call() -> None:
    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert examples, "examples/*.yaml missing"
    args = [arg for path in examples for arg in ("-f", str(path))]
    result = _kubeaccel("validate", *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("✓") == len(examples)


def test_version_prints_the_package_version() -> None:
    from kubeaccel_api import __version__

    result = _kubeaccel("version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_help_lists_every_command_without_importing_them() -> None:
    result = _kubeaccel("--help")
    assert result.returncode == 0
    for name in (
        "bench",
        "crd",
        "fetch-artifact",
        "infer",
        "init",
        "optimize",
        "run",
        "serve",
        "stop",
        "validate",
        "version",
    ):
        assert name in result.stdout
