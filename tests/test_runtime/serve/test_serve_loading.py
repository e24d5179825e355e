"""Loading a shard: digests, providers, threads, contract against the model's signature."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec, ExecutionProvider
from kubeaccel_runtime.serve.session import (
    CPU,
    CUDA,
    TENSORRT,
    LoadError,
    SessionConfig,
    choose_providers,
    cpu_limit,
    load_shard,
    parse_cpu_max,
)
from serve_fixtures import CPU1, MLP_INPUTS, build_mlp, spec_for, write_artifact


def tampered_copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    shard = dst / "shard-0.onnx"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in a weight
    shard.write_bytes(bytes(data))
    return dst


def test_a_shard_whose_sha256_differs_from_the_manifest_is_refused(
    mlp_artifact: Path, tmp_path: Path
) -> None:
    with pytest.raises(LoadError, match=r"shard-0.onnx: sha256 mismatch"):
        load_shard(tampered_copy(mlp_artifact, tmp_path), 0, config=CPU1)


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"no manifest\.json"):
        load_shard(tmp_path, 0, config=CPU1)


def test_a_missing_shard_index_is_refused(mlp_artifact: Path) -> None:
    with pytest.raises(LoadError, match="no shard 3"):
        load_shard(mlp_artifact, 3, config=CPU1)


def test_the_loaded_model_reports_the_provider_actually_in_use(mlp_artifact: Path) -> None:
    model = load_shard(mlp_artifact, 0, config=CPU1)
    assert model.provider == CPU
    assert model.session.get_providers()[0] == model.provider
    assert model.intra_op_threads == 1
    opts = model.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert choose_providers(ExecutionProvider.AUTO, [CPU]) == [CPU]
    assert choose_providers(ExecutionProvider.AUTO, [CPU, CUDA]) == [CUDA, CPU]
    assert choose_providers(ExecutionProvider.AUTO, [CPU, CUDA, TENSORRT]) == [TENSORRT, CUDA, CPU]


def test_a_forced_provider_that_is_not_installed_fails_clearly() -> None:
    with pytest.raises(LoadError, match=r"executionProvider cuda requires CUDAExecutionProvider"):
        choose_providers(ExecutionProvider.CUDA, [CPU])
    assert choose_providers(ExecutionProvider.CUDA, [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers(ExecutionProvider.CPU, [CUDA, CPU]) == [CPU]


def test_forcing_a_gpu_provider_on_a_cpu_build_refuses_to_load(mlp_artifact: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the fallback check applies instead")
    with pytest.raises(LoadError, match="CUDAExecutionProvider"):
        load_shard(mlp_artifact, 0, config=SessionConfig(provider=ExecutionProvider.CUDA))


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("200000 100000", 2.0),
        ("50000 100000", 0.5),
        ("max 100000", None),
        ("junk", None),
        ("", None),
    ],
)
def test_cgroup_cpu_max_is_parsed(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_threads_follow_the_cgroup_limit_rounded_down_but_at_least_one(tmp_path: Path) -> None:
    f = tmp_path / "cpu.max"
    f.write_text("50000 100000\n")
    assert cpu_limit(f) == 1
    f.write_text("max 100000\n")
    assert cpu_limit(f) >= 1
    assert cpu_limit(tmp_path / "absent") >= 1


def test_a_contract_that_contradicts_the_model_refuses_to_load(tmp_path: Path) -> None:
    spec = spec_for([{"name": "x", "dtype": "float32", "shape": [-1, 5]}])
    art = write_artifact(tmp_path, build_mlp(), spec, name="bad")
    with pytest.raises(LoadError, match=r"contract shape \[-1, 5\] does not match"):
        load_shard(art, 0, config=CPU1)


def test_a_contract_naming_an_unknown_input_refuses_to_load(tmp_path: Path) -> None:
    spec = spec_for([{"name": "image", "dtype": "float32", "shape": [-1, 4]}])
    art = write_artifact(tmp_path, build_mlp(), spec, name="bad")
    with pytest.raises(LoadError, match=r"spec.inputs names \['image'\]"):
        load_shard(art, 0, config=CPU1)


def test_a_contract_with_another_dtype_refuses_to_load(tmp_path: Path) -> None:
    spec = spec_for([{"name": "x", "dtype": "float16", "shape": [-1, 4]}])
    art = write_artifact(tmp_path, build_mlp(), spec, name="bad")
    with pytest.raises(LoadError, match="dtype float16 but the model has float32"):
        load_shard(art, 0, config=CPU1)


def test_a_spec_given_at_start_overrides_the_manifests(mlp_artifact: Path) -> None:
    spec = AcceleratedModelSpec.model_validate(spec_for(MLP_INPUTS, limits={"maxBatch": 3}))
    model = load_shard(mlp_artifact, 0, spec=spec, config=CPU1)
    assert model.contract.max_batch == 3
    manifest = json.loads((mlp_artifact / "manifest.json").read_text())
    assert manifest["spec"].get("limits", {}).get("maxBatch", 64) == 64
    assert load_shard(mlp_artifact, 0, config=CPU1).contract.max_batch == 64
