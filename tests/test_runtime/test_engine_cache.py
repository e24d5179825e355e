"""TensorRT engines shipped in the artifact: written and verified with every other file,
and handed to the server's TensorRT provider with the options they were built with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import DType, ExecutionProvider, LimitsSpec, PartitionBalance
from kubeaccel_runtime.artifact_manifest import (
    ArtifactInvalid,
    EngineCache,
    TensorInfo,
    read_manifest,
    verify_artifact,
)
from kubeaccel_runtime.optimize.artifact import write_artifact
from kubeaccel_runtime.optimize.config import Precision
from kubeaccel_runtime.optimize.engine_cache import build_engines, shard_options, zero_feeds
from kubeaccel_runtime.optimize.partition import partition
from kubeaccel_runtime.serve.session import SessionConfig, load_shard, with_artifact_engines
from kubeaccel_runtime.trt import CPU, CUDA, ENGINE_CACHE_DIR, TENSORRT

AID = "fedcba9876543210"
SHA = "b" * 64
OPTIONS = [{"trt_fp16_enable": "True", "trt_int8_enable": "False"}] * 2


def _engines(folder: Path) -> tuple[Path, EngineCache]:
    folder.mkdir()
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_1_0_sm90.engine").write_bytes(b"e0" * 64)
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_1_0_sm90.profile").write_bytes(b"p0")
    entry = EngineCache(
        provider=TENSORRT,
        dir=ENGINE_CACHE_DIR,
        gpu="NVIDIA H200",
        compute_capability="9.0",
        shard_options=OPTIONS,
        max_batch=64,
        files={},
    )
    return folder, entry


def _write(tmp_path: Path, model: Any) -> Path:
    return write_artifact(
        tmp_path / "out",
        artifact_id=AID,
        model_name="tiny",
        source_sha256=SHA,
        execution_provider=TENSORRT,
        shards=partition(model, 2, PartitionBalance.MEMORY),
        spec_wire={
            "source": {"uri": "file://m.onnx", "sha256": SHA},
            "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 64]}],
        },
        report={"summary": {"artifactId": AID}},
        engines=_engines(tmp_path / "built"),
    )


def test_the_engines_are_copied_into_the_artifact_with_their_digests(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    manifest = verify_artifact(path)
    cache = manifest.engine_cache
    assert cache is not None and cache.gpu == "NVIDIA H200" and cache.shard_options == OPTIONS
    assert cache.max_batch == 64
    assert sorted(cache.files) == sorted(p.name for p in (path / ENGINE_CACHE_DIR).iterdir())
    assert (
        json.loads((path / "manifest.json").read_text())["engineCache"]["computeCapability"]
        == "9.0"
    )


def test_a_tampered_or_missing_engine_fails_verification(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    engine = next((path / ENGINE_CACHE_DIR).glob("*.engine"))
    engine.write_bytes(b"evil")
    with pytest.raises(ArtifactInvalid, match="sha256 mismatch"):
        verify_artifact(path)
    engine.unlink()
    with pytest.raises(ArtifactInvalid, match="listed but missing"):
        verify_artifact(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dir": "../elsewhere"}, "illegal engine cache folder"),
        ({"files": {"../../etc/passwd": SHA}}, "illegal file name"),
        ({"shardOptions": [{}]}, "options for 1 shard"),
    ],
)
def test_an_engine_cache_entry_that_breaks_the_layout_is_rejected(
    tmp_path, opt_models, change, message
):
    path = _write(tmp_path, opt_models.mlp())
    raw = json.loads((path / "manifest.json").read_text())
    raw["engineCache"].update(change)
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactInvalid, match=message):
        verify_artifact(path)


def test_the_server_points_tensorrt_at_the_artifacts_engines_with_their_options(
    tmp_path, opt_models
):
    path = _write(tmp_path, opt_models.mlp())
    manifest = read_manifest(path)
    spec = manifest.parsed_spec()  # limits.maxBatch 64: inside the engines' profile
    cfg = with_artifact_engines(SessionConfig(), path, manifest, 1, spec)
    assert cfg.trt_options == {
        **OPTIONS[1],
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(path / ENGINE_CACHE_DIR),
    }
    explicit = SessionConfig(trt_options={"trt_fp16_enable": "False"})
    assert with_artifact_engines(explicit, path, manifest, 1, spec) is explicit


def test_engines_whose_profile_is_too_small_for_the_spec_are_not_used(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    manifest = read_manifest(path)
    raised = manifest.parsed_spec().model_copy(
        update={"limits": LimitsSpec(max_batch=128)}  # raised after the Job built them
    )
    plain = SessionConfig()
    assert with_artifact_engines(plain, path, manifest, 0, raised) is plain


def test_an_artifact_with_engines_still_loads_where_tensorrt_is_not_used(tmp_path, opt_models):
    path = _write(tmp_path, opt_models.mlp())
    loaded = load_shard(
        path, 0, config=SessionConfig(provider=ExecutionProvider.CPU, intra_op_threads=1)
    )
    assert loaded.provider == CPU


def test_shard_options_carry_the_precision_and_each_shards_own_profile(opt_models):
    shards = partition(opt_models.mlp(), 2, PartitionBalance.MEMORY)
    int8 = shard_options(shards, Precision.INT8, opt_batch=8, max_batch=32)
    assert [o["trt_int8_enable"] for o in int8] == ["True", "True"]
    assert [o["trt_fp16_enable"] for o in int8] == ["False", "False"]
    first, second = (o["trt_profile_max_shapes"] for o in int8)
    assert first.startswith("input:32x") and not second.startswith("input:")
    fp32 = shard_options(shards, Precision.FP32, opt_batch=1, max_batch=4)
    assert fp32[0]["trt_profile_opt_shapes"].startswith("input:1x")


def test_zero_feeds_make_one_row_of_every_input():
    feeds = zero_feeds(
        [
            TensorInfo(name="x", dtype=DType.FLOAT16, shape=[-1, 3]),
            TensorInfo(name="ids", dtype=DType.INT64, shape=[2, -1]),
        ]
    )
    assert feeds["x"].shape == (1, 3) and feeds["x"].dtype == np.float16
    assert feeds["ids"].shape == (2, 1) and feeds["ids"].dtype == np.int64


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot run here, or None when a session really gets it."""
    import onnxruntime as ort

    if TENSORRT not in ort.get_available_providers():
        return "onnxruntime offers no TensorrtExecutionProvider (install kubeaccel[gpu] on a GPU)"
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    used = ort.InferenceSession(blob, providers=[TENSORRT, CUDA, CPU]).get_providers()[0]
    return None if used == TENSORRT else f"TensorRT falls back to {used} here (no GPU or no libs)"


def test_the_job_builds_engines_a_second_load_reuses(tmp_path, opt_models):
    problem = tensorrt_problem()
    if problem:
        pytest.skip(f"GPU only: {problem}")
    shards = partition(opt_models.mlp(), 2, PartitionBalance.MEMORY)
    options = shard_options(shards, Precision.FP32, opt_batch=8, max_batch=32)
    built = build_engines(shards, options, tmp_path, threads=1)
    assert any(name.endswith(".engine") for name in built.files)
    assert built.notes["rebuiltOnReload"] == 0
