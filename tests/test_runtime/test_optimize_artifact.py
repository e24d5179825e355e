"""Artifact writing and verification: atomic, complete, and tamper-evident."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubeaccel_api.v1alpha1 import PartitionBalance
from kubeaccel_runtime.artifact_manifest import ArtifactInvalid, read_manifest, verify_artifact
from kubeaccel_runtime.optimize.artifact import write_artifact
from kubeaccel_runtime.optimize.partition import partition

AID = "0123456789abcdef"
SHA = "a" * 64


def _write(out: Path, model, shards: int = 2, **kw):  # type: ignore[no-untyped-def]
    return write_artifact(
        out,
        artifact_id=AID,
        model_name="tiny",
        source_sha256=SHA,
        execution_provider="CPUExecutionProvider",
        shards=partition(model, shards, PartitionBalance.MEMORY),
        spec_wire={
            "source": {"uri": "file://m.onnx", "sha256": SHA},
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 64]}],
        },
        report={"summary": {"artifactId": AID}},
        **kw,
    )


def test_the_manifest_follows_the_contract(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    raw = json.loads((path / "manifest.json").read_text())
    assert set(raw) == {
        "kubeaccelVersion", "artifactId", "modelName", "sourceSha256", "executionProvider",
        "inputs", "outputs", "shards", "files", "spec",
    }  # fmt: skip
    assert raw["artifactId"] == AID and raw["sourceSha256"] == SHA
    assert raw["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 64]}]
    assert raw["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}]
    assert set(raw["files"]) == {"shard-0.onnx", "shard-1.onnx", "report.json"}
    shard = raw["shards"][0]
    assert set(shard) == {"index", "file", "sha256", "bytes", "inputs", "outputs"}
    assert shard["sha256"] == raw["files"]["shard-0.onnx"]
    assert shard["bytes"] == (path / "shard-0.onnx").stat().st_size
    assert raw["shards"][0]["outputs"] == raw["shards"][1]["inputs"]
    manifest = verify_artifact(path)
    assert manifest.parsed_spec().source.uri == "file://m.onnx"


def test_writing_leaves_no_temporary_directories(tmp_path, opt_models):
    _write(tmp_path, opt_models.mlp())
    assert [p.name for p in tmp_path.iterdir()] == [AID]


def test_an_existing_complete_artifact_is_not_rewritten(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert _write(tmp_path, opt_models.mlp(), shards=3) == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp
    assert len(verify_artifact(path).shards) == 2
    _write(tmp_path, opt_models.mlp(), shards=3, force=True)
    assert len(verify_artifact(path).shards) == 3
    assert [p.name for p in tmp_path.iterdir()] == [AID]


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, opt_models, monkeypatch):
    from kubeaccel_runtime.optimize import artifact

    def boom(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact, "_install", boom)
    from kubeaccel_runtime.optimize.errors import ArtifactError

    with pytest.raises(ArtifactError, match="No space left on device"):
        _write(tmp_path, opt_models.mlp())
    assert list(tmp_path.iterdir()) == []


def test_verify_detects_a_tampered_shard(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    with (path / "shard-1.onnx").open("ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(
        ArtifactInvalid, match=r"shard-1.onnx: sha256 mismatch .* modified or corrupted"
    ):
        verify_artifact(path)


def test_verify_detects_a_tampered_report(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    (path / "report.json").write_text("{}")
    with pytest.raises(ArtifactInvalid, match=r"report\.json: sha256 mismatch"):
        verify_artifact(path)


def test_verify_detects_a_missing_file(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    os.remove(path / "shard-0.onnx")
    with pytest.raises(ArtifactInvalid, match=r"shard-0\.onnx is listed but missing"):
        verify_artifact(path)


def test_verify_rejects_a_manifest_that_points_outside_the_artifact(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    raw = json.loads((path / "manifest.json").read_text())
    raw["files"]["../../etc/passwd"] = SHA
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactInvalid, match=r"illegal file name '\.\./\.\./etc/passwd'"):
        verify_artifact(path)


def test_verify_rejects_a_broken_shard_chain(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    raw = json.loads((path / "manifest.json").read_text())
    raw["shards"][1]["inputs"][0]["name"] = "other"
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactInvalid, match="shard 0 outputs do not feed shard 1 inputs"):
        verify_artifact(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no manifest.json"),
        ("{not json", "unreadable manifest"),
        ('{"artifactId": 1}', "invalid manifest at"),
    ],
)
def test_verify_rejects_missing_or_malformed_manifests(tmp_path, content, message):
    folder = tmp_path / AID
    folder.mkdir()
    if content is not None:
        (folder / "manifest.json").write_text(content)
    with pytest.raises(ArtifactInvalid, match=message):
        read_manifest(folder) if content else verify_artifact(folder)


def test_another_process_verifies_without_onnxruntime_or_torch(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    code = (
        "import sys; from pathlib import Path;"
        "from kubeaccel_runtime.artifact_manifest import verify_artifact;"
        f"m = verify_artifact(Path({str(path)!r}));"
        "heavy = [n for n in ('onnxruntime', 'onnx', 'torch', 'onnxscript', 'numpy') if n in sys.modules];"
        "print(len(m.shards), heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "2 []"
