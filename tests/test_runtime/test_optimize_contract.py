"""A spec without inputs: the Job reads the contract from the model, records it, and the
server enforces it as if it had been written; a written one is still checked everywhere."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from kubeaccel_api.v1alpha1 import OptimizationStatus, SourceFormat
from kubeaccel_runtime.artifact_manifest import read_manifest, verify_artifact
from kubeaccel_runtime.optimize.bench import BenchSettings
from kubeaccel_runtime.optimize.cpu import CpuFeatures
from kubeaccel_runtime.optimize.errors import ContractMismatch, SourceError, UnsupportedModel
from kubeaccel_runtime.optimize.pipeline import RunOptions, run_optimization
from kubeaccel_runtime.serve.app import create_app
from kubeaccel_runtime.serve.session import SessionConfig, load_shard
from kubeaccel_runtime.specfile import load_one
from onnx import TensorProto, helper

OPTIONS = RunOptions(
    threads=1,
    bench=BenchSettings(iterations=3, warmup=1, profile_runs=1),
    measure_rss=False,
    profile=False,
    cpu=CpuFeatures("x86_64", vnni=True, flags_known=True),
)


def _spec(
    tmp_path: Path,
    model_file: str,
    *,
    name: str = "m",
    source_format: str = "onnx",
    **spec: Any,
) -> tuple[Any, Path]:
    """A resource for `model_file` in tmp_path, without inputs unless given."""
    blob = (tmp_path / model_file).read_bytes()
    source = {
        "uri": f"file://{model_file}",
        "format": source_format,
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    doc = {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": name},
        "spec": {"source": source, **spec},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_one(path), tmp_path / "out"


def _optimize(resource: Any, out: Path, tmp_path: Path) -> Path:
    options = RunOptions(**{**OPTIONS.__dict__, "cwd": tmp_path})
    return run_optimization(resource, out, options=options).path


def _write(tmp_path: Path, model: onnx.ModelProto, name: str = "model.onnx") -> str:
    (tmp_path / name).write_bytes(model.SerializeToString())
    return name


async def _post(app: Any, name: str, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post(f"/v2/models/{name}/infer", json=body)


def _body(shape: list[int]) -> dict[str, Any]:
    count = int(np.prod(shape))
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": [0.5] * count}]
    }


async def test_a_spec_without_inputs_is_optimized_recorded_and_enforced_by_the_server(
    tmp_path: Path, opt_models: Any
) -> None:
    resource, out = _spec(tmp_path, _write(tmp_path, opt_models.cnn()), name="cnn")
    assert resource.spec.inputs is None
    artifact = _optimize(resource, out, tmp_path)
    manifest = verify_artifact(artifact)
    expected = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
    }
    assert manifest.contract is not None and manifest.contract.to_wire() == expected
    report = json.loads((artifact / "report.json").read_text())
    summary = OptimizationStatus.model_validate(report["summary"])
    assert summary.contract is not None and summary.contract.to_wire() == expected

    # The server reads the user's spec (no inputs), as in a pod, and the manifest's contract.
    model = load_shard(artifact, 0, spec=resource.spec, config=SessionConfig(intra_op_threads=1))
    [rule] = model.contract.inputs
    assert (rule.name, rule.shape, rule.reject_non_finite) == ("input", (-1, 1, 8, 8), True)
    app = create_app(model)
    ok = await _post(app, "cnn", _body([2, 1, 8, 8]))
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["shape"] == [2, 10]
    wrong = await _post(app, "cnn", _body([1, 1, 8, 9]))
    assert wrong.status_code == 400 and "dimension 3 must be 8" in wrong.json()["error"]
    nan = _body([1, 1, 8, 8])
    nan["inputs"][0]["data"][0] = "NaN"
    assert (await _post(app, "cnn", nan)).status_code == 400


def test_a_written_contract_still_wins_and_is_recorded_next_to_the_models(
    tmp_path: Path, opt_models: Any
) -> None:
    written = [
        {"name": "input", "dtype": "float32", "shape": [-1, 64], "range": {"min": 0, "max": 1}}
    ]
    resource, out = _spec(tmp_path, _write(tmp_path, opt_models.mlp()), inputs=written)
    artifact = _optimize(resource, out, tmp_path)
    assert read_manifest(artifact).contract is not None
    model = load_shard(artifact, 0, spec=resource.spec, config=SessionConfig(intra_op_threads=1))
    assert (model.contract.inputs[0].min, model.contract.inputs[0].max) == (0.0, 1.0)


def test_a_reused_artifact_checks_a_changed_written_contract(
    tmp_path: Path, opt_models: Any
) -> None:
    name = _write(tmp_path, opt_models.mlp())
    resource, out = _spec(tmp_path, name)
    first = _optimize(resource, out, tmp_path)
    wrong = [{"name": "input", "dtype": "float32", "shape": [-1, 65]}]
    changed, _ = _spec(tmp_path, name, inputs=wrong)
    with pytest.raises(ContractMismatch, match=r"spec.inputs\[0\] \(input\): shape\[1\] is 65"):
        _optimize(changed, out, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [first.name]


def test_a_pickle_named_as_onnx_is_refused_before_any_parser_reads_it(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(pickle.dumps({"not": "a model"}))
    resource, out = _spec(tmp_path, "model.onnx")
    with pytest.raises(UnsupportedModel, match="is a Python pickle; kubeaccel never unpickles"):
        _optimize(resource, out, tmp_path)


def test_a_file_of_another_format_names_the_format_to_declare(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.jit.script(torch.nn.Linear(4, 2)).save(str(tmp_path / "model.pt"))
    resource, out = _spec(tmp_path, "model.pt")
    with pytest.raises(UnsupportedModel, match=r"set source\.format: torchscript"):
        _optimize(resource, out, tmp_path)


def test_a_non_onnx_file_lists_what_kubeaccel_reads(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12garbage" * 10)
    resource, out = _spec(tmp_path, "model.onnx")
    with pytest.raises(UnsupportedModel, match=r"not an ONNX model.*kubeaccel reads ONNX files"):
        _optimize(resource, out, tmp_path)


def test_missing_external_weights_say_where_they_are_expected(
    tmp_path: Path, opt_models: Any, opt_external_saver: Any
) -> None:
    opt_external_saver(opt_models.mlp(), tmp_path / "model.onnx", "model.onnx.data")
    (tmp_path / "model.onnx.data").unlink()
    resource, out = _spec(tmp_path, "model.onnx")
    with pytest.raises(SourceError) as info:
        _optimize(resource, out, tmp_path)
    assert "keeps its weights in 'model.onnx.data', which is missing" in str(info.value)
    assert str(tmp_path / "model.onnx.data") in str(info.value)


def test_a_rankless_input_without_a_written_contract_says_what_to_do(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    resource, out = _spec(tmp_path, _write(tmp_path, model))
    with pytest.raises(UnsupportedModel, match="input 'x' has no rank"):
        _optimize(resource, out, tmp_path)


def test_torchscript_without_a_contract_handed_over_unchecked_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.jit.script(torch.nn.Linear(4, 2)).save(str(tmp_path / "model.pt"))
    written = [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
    resource, out = _spec(tmp_path, "model.pt", inputs=written)
    source = resource.spec.source.model_copy(update={"format": SourceFormat.TORCHSCRIPT})
    # model_copy skips validation: what a spec that bypassed the API would look like.
    spec = resource.spec.model_copy(update={"source": source, "inputs": None})
    with pytest.raises(UnsupportedModel, match=r"spec\.inputs is required for torchscript"):
        _optimize(resource.model_copy(update={"spec": spec}), out, tmp_path)


def test_a_torch_export_program_without_a_contract_gets_the_one_its_export_declares(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU()).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.randn(2, 6),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "model.pt2"))
    resource, out = _spec(tmp_path, "model.pt2", source_format="torch-exported-program")
    artifact = _optimize(resource, out, tmp_path)
    contract = read_manifest(artifact).contract
    assert contract is not None
    [tensor] = contract.inputs
    assert (tensor.dtype.value, tensor.shape) == ("float32", [-1, 6])
    assert [t.shape for t in contract.outputs] == [[-1, 3]]
