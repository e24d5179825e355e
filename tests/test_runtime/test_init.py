"""`kubeaccel init MODEL`: a spec that validates, describes the model, and fails clearly."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner, Result
from kubeaccel_api.v1alpha1 import SourceFormat
from kubeaccel_api.validation import parse_resource
from kubeaccel_runtime.cli import main
from kubeaccel_runtime.init.draft import Choices, build_draft, name_from
from kubeaccel_runtime.init.probe import DataFacts, ModelFacts, as_uri
from kubeaccel_runtime.init.render import flow, render
from kubeaccel_runtime.model_contract import read_contract
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["cnn", "mlp", "transformer"]


def _init(*args: str) -> Result:
    return CliRunner().invoke(main, ["init", *args], catch_exceptions=False)


def _doc(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def _contract(spec: dict[str, Any]) -> list[Any]:
    return [
        [(t["name"], t["dtype"], t["shape"]) for t in spec[kind]] for kind in ("inputs", "outputs")
    ]


@pytest.mark.parametrize("name", EXAMPLES)
def test_init_reads_digest_format_and_contract_of_every_example_model(
    tmp_path: Path, name: str
) -> None:
    model = ROOT / "examples" / "models" / f"{name}.onnx"
    out = tmp_path / f"{name}.yaml"
    result = _init(str(model), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout and "read from the model" in result.stdout
    doc = _doc(out)
    resource = parse_resource(doc)  # exactly what `kubeaccel validate` runs
    assert resource.metadata.name == name
    spec = doc["spec"]
    assert spec["source"] == {
        "uri": f"file://{model}",
        "format": "onnx",
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
    }
    # The hand-written example states the same contract init read from the file.
    example = _doc(ROOT / "examples" / f"{name}.yaml")["spec"]
    assert _contract(spec) == _contract(example)
    assert spec["optimization"]["quantization"]["mode"] == "auto"
    assert spec["optimization"]["accuracyBudget"] == {"minTop1Agreement": 0.98}
    assert spec["runtime"]["batching"]["enabled"] is True


def test_the_spec_is_written_next_to_the_model_with_a_path_relative_to_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    shutil.copy(ROOT / "examples" / "models" / "mlp.onnx", tmp_path / "models" / "My Model.onnx")
    monkeypatch.chdir(tmp_path)
    result = _init("models/My Model.onnx")
    assert result.exit_code == 0, result.output
    doc = _doc(tmp_path / "models" / "My Model.yaml")
    assert doc["metadata"]["name"] == "my-model"
    assert doc["spec"]["source"]["uri"] == "file://models/My Model.onnx"
    text = (tmp_path / "models" / "My Model.yaml").read_text()
    assert "kubeaccel run -f models/My Model.yaml" in text


def test_commented_yaml_goes_to_stdout_with_dash(tmp_path: Path) -> None:
    result = _init(str(ROOT / "examples" / "models" / "cnn.onnx"), "-o", "-")
    assert result.exit_code == 0
    assert result.stdout.startswith("# AcceleratedModel for cnn.onnx")
    assert "# The request contract (read from the model)" in result.stdout
    parse_resource(yaml.safe_load(result.stdout))
    assert not list(tmp_path.iterdir())


def test_an_existing_file_is_never_overwritten_without_force(tmp_path: Path) -> None:
    out = tmp_path / "cnn.yaml"
    out.write_text("# mine\n")
    model = str(ROOT / "examples" / "models" / "cnn.onnx")
    refused = _init(model, "-o", str(out))
    assert refused.exit_code == 1 and "exists; pass --force" in refused.stderr
    assert out.read_text() == "# mine\n"
    assert _init(model, "-o", str(out), "--force").exit_code == 0
    assert _doc(out)["kind"] == "AcceleratedModel"


def test_flags_for_shards_gpus_and_data_shape_the_spec(tmp_path: Path) -> None:
    models = ROOT / "examples" / "models"
    out = tmp_path / "t.yaml"
    result = _init(
        str(models / "transformer.onnx"),
        "-o", str(out),
        "--name", "digits",
        "--shards", "2",
        "--gpus", "1",
        "--calibration", str(models / "digits-calib-transformer.npz"),
        "--validation", str(models / "digits-val-transformer.npz"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    spec = parse_resource(_doc(out)).spec
    assert spec.optimization.partition.shards == 2
    assert spec.runtime.resources.gpus == 1
    assert spec.runtime.tolerations and spec.runtime.tolerations[0].key == "nvidia.com/gpu"
    calibration = spec.optimization.quantization.calibration
    assert calibration is not None and calibration.samples == 128
    assert calibration.uri == f"file://{models / 'digits-calib-transformer.npz'}"
    assert spec.optimization.validation.samples == 540  # every labelled sample in the file
    budget = spec.optimization.accuracy_budget
    assert (budget.max_accuracy_drop, budget.min_top1_agreement) == (0.01, 0.97)


def test_validation_data_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "val.npz", pixels=np.zeros((4, 784), np.float32))
    out = tmp_path / "m.yaml"
    result = _init(
        str(ROOT / "examples" / "models" / "mlp.onnx"),
        "-o", str(out),
        "--validation", str(tmp_path / "val.npz"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--validation: val.npz: no array named 'input' (has: pixels)" in result.stderr
    assert not out.exists()


def _graph_model(inputs: list[Any], outputs: list[Any], nodes: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_fixed_batch_regression_model_gets_no_batching_and_a_relative_budget(
    tmp_path: Path,
) -> None:
    model = _graph_model(
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 3, 2])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 3, 2])],
        [helper.make_node("Relu", ["features"], ["value"])],
    )
    onnx.save(model, tmp_path / "reg.onnx")
    result = _init(str(tmp_path / "reg.onnx"))
    assert result.exit_code == 0, result.output
    spec = _doc(tmp_path / "reg.yaml")["spec"]
    assert spec["runtime"]["batching"] == {"enabled": False}
    assert spec["optimization"]["accuracyBudget"] == {"maxMeanRelError": 0.01}
    assert spec["inputs"] == [{"name": "features", "dtype": "float32", "shape": [1, 3, 2]}]


def _refused(tmp_path: Path, *args: str) -> str:
    result = _init(*args)
    assert result.exit_code == 1, result.output
    assert not list(tmp_path.glob("*.yaml")), "nothing may be written on an error"
    return result.stderr


def test_a_pickle_is_refused_with_why(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"weights": [1.0]}))
    err = _refused(tmp_path, str(tmp_path / "model.pkl"))
    assert "model.pkl is a Python pickle; kubeaccel never unpickles" in err
    assert "torch.onnx.export" in err


def test_a_file_that_is_not_onnx_lists_what_kubeaccel_reads(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12not a model at all" * 4)
    err = _refused(tmp_path, str(tmp_path / "model.onnx"))
    assert f"{tmp_path / 'model.onnx'}: not an ONNX model" in err
    assert "kubeaccel reads ONNX files, TorchScript archives" in err


def test_missing_external_weights_name_the_file_and_where_it_belongs(
    tmp_path: Path, opt_models: Any, opt_external_saver: Any
) -> None:
    opt_external_saver(opt_models.mlp(), tmp_path / "big.onnx", "big.weights")
    (tmp_path / "big.weights").unlink()
    err = _refused(tmp_path, str(tmp_path / "big.onnx"))
    assert "keeps its weights in 'big.weights', which is missing" in err
    assert f"expected at {tmp_path / 'big.weights'}" in err


def test_external_weights_beside_the_model_are_counted_not_read(
    tmp_path: Path, opt_models: Any, opt_external_saver: Any
) -> None:
    opt_external_saver(opt_models.mlp(), tmp_path / "big.onnx", "big.weights")
    result = _init(str(tmp_path / "big.onnx"))
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256((tmp_path / "big.onnx").read_bytes()).hexdigest()
    assert _doc(tmp_path / "big.yaml")["spec"]["source"]["sha256"] == digest


@pytest.mark.parametrize(
    ("value_info", "words"),
    [
        (helper.make_tensor_value_info("", TensorProto.FLOAT, ["n", 2]), "input #0 has no name"),
        (helper.make_tensor_value_info("x", TensorProto.FLOAT, None), "input 'x' has no rank"),
    ],
    ids=["no-name", "no-rank"],
)
def test_inputs_without_a_name_or_a_rank_are_refused(
    tmp_path: Path, value_info: Any, words: str
) -> None:
    model = _graph_model(
        [value_info],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [helper.make_node("Relu", [value_info.name], ["y"])],
    )
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    assert words in _refused(tmp_path, str(tmp_path / "m.onnx"))


def test_a_name_the_api_refuses_is_reported_with_its_rule(tmp_path: Path) -> None:
    err = _refused(
        tmp_path, str(ROOT / "examples" / "models" / "mlp.onnx"), "--name", "Not_A_Label"
    )
    assert "metadata.name: must be a DNS-1035 label" in err


def test_a_missing_model_names_the_path_looked_at(tmp_path: Path) -> None:
    err = _refused(tmp_path, str(tmp_path / "absent.onnx"))
    assert f"no such file {tmp_path / 'absent.onnx'}" in err


# --------------------------------------------------------------------------- torch sources

torch_only = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Tiny:
    """A small torch module, built lazily so the module imports without torch."""

    @staticmethod
    def make() -> Any:
        torch = pytest.importorskip("torch")
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU()).eval()


@torch_only
def test_an_onnx_file_exported_from_a_fresh_torch_module_is_described(
    tmp_path: Path, opt_torch_exporter: Any
) -> None:
    opt_torch_exporter(_Tiny.make(), 6, tmp_path / "fresh.onnx")
    result = _init(str(tmp_path / "fresh.onnx"))
    assert result.exit_code == 0, result.output
    spec = _doc(tmp_path / "fresh.yaml")["spec"]
    assert _contract(spec) == [
        [("features", "float32", [-1, 6])],
        [("scores", "float32", [-1, 4])],
    ]
    assert spec["optimization"]["accuracyBudget"] == {"minTop1Agreement": 0.98}


@torch_only
def test_a_torch_export_program_is_described_by_its_export(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    program = torch.export.export(
        _Tiny.make(), (torch.randn(2, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(tmp_path / "tiny.pt2"))
    result = _init(str(tmp_path / "tiny.pt2"), "-o", "-")
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)  # stdout holds the YAML alone, no exporter chatter
    assert doc["spec"]["source"]["format"] == "torch-exported-program"
    assert [(t["dtype"], t["shape"]) for t in doc["spec"]["inputs"]] == [("float32", [-1, 6])]


@torch_only
def test_torchscript_needs_the_inputs_named_and_checks_them_by_exporting(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.jit.script(_Tiny.make()).save(str(tmp_path / "tiny.pt"))
    model = str(tmp_path / "tiny.pt")
    assert "--input NAME:DTYPE:SHAPE" in _refused(tmp_path, model)
    assert "cannot export torchscript to ONNX" in _refused(
        tmp_path, model, "--input", "x:float32:-1,7"
    )
    assert "expected NAME:DTYPE:SHAPE" in _refused(tmp_path, model, "--input", "x:float32")
    assert "dtype: Input should be" in _refused(tmp_path, model, "--input", "x:float33:-1,6")
    result = _init(model, "--input", "x:float32:-1,6")
    assert result.exit_code == 0, result.output
    assert "given with --input" in result.stdout
    spec = parse_resource(_doc(tmp_path / "tiny.yaml")).spec
    assert spec.source.format.value == "torchscript"
    assert [(t.name, t.shape) for t in spec.inputs or []] == [("x", [-1, 6])]
    assert [t.shape for t in spec.outputs or []] == [[-1, 4]]


def test_input_flags_for_an_onnx_model_are_checked_against_it(tmp_path: Path) -> None:
    model = str(ROOT / "examples" / "models" / "mlp.onnx")
    err = _refused(tmp_path, model, "--input", "input:float16:-1,784")
    assert "--input.inputs[0] (input): dtype float16, the model's is float32" in err


# --------------------------------------------------------------------------- pure parts


def _facts(**changes: Any) -> ModelFacts:
    contract = read_contract(onnx.load(ROOT / "examples" / "models" / "cnn.onnx"))
    base = ModelFacts(
        uri="file://m.onnx",
        file_name="m.onnx",
        format=SourceFormat.ONNX,
        sha256="0" * 64,
        bytes=300 * 1024**2,
        contract=contract,
        declared_inputs=False,
    )
    return ModelFacts(**{**base.__dict__, **changes})


def test_resources_grow_with_the_model_and_shrink_with_shards() -> None:
    one = build_draft(_facts(), Choices()).doc["spec"]
    two = build_draft(_facts(), Choices(shards=2)).doc["spec"]
    assert one["runtime"]["resources"]["memory"] == "1472Mi"  # 256 Mi + 4 x 300 Mi
    assert two["runtime"]["resources"]["memory"] == "896Mi"
    assert one["storage"]["pvc"]["size"] == "2Gi"


def test_unlabelled_validation_data_keeps_the_agreement_budget() -> None:
    data = DataFacts(uri="file://v.npz", samples=5000, labelled=False)
    spec = build_draft(_facts(), Choices(validation=data)).doc["spec"]
    assert spec["optimization"]["accuracyBudget"] == {"minTop1Agreement": 0.98}
    assert spec["optimization"]["validation"] == {"uri": "file://v.npz", "samples": 1000}


@pytest.mark.parametrize(
    ("file_name", "name"),
    [("cnn.onnx", "cnn"), ("ResNet_50.v2.onnx", "resnet-50-v2"), ("3d.pt", "model-3d"),
     ("x" * 60 + ".onnx", "x" * 40), ("---.onnx", "model")],
)  # fmt: skip
def test_names_come_from_the_file_as_dns_labels(file_name: str, name: str) -> None:
    assert name_from(file_name) == name


def test_uris_keep_relative_paths_relative_and_leave_uris_alone() -> None:
    assert as_uri("./models/../m.onnx") == "file://m.onnx"
    assert as_uri("/abs/m.onnx") == "file:///abs/m.onnx"
    assert as_uri("https://host/m.onnx") == "https://host/m.onnx"


def test_rendering_quotes_what_yaml_would_misread_and_parses_back() -> None:
    facts = _facts(uri="file://odd: #name.onnx", file_name="odd\nname.onnx")
    draft = build_draft(facts, Choices(name="odd"))
    text = render(draft, ["for odd\nname.onnx"])
    assert yaml.safe_load(text) == draft.doc
    for tricky in ("yes", "1.5", "0o17", "null", "a: b", "# c", "[d]", "'e'", ""):
        assert yaml.safe_load(f"k: {flow(tricky)}") == {"k": tricky}


def test_data_the_cluster_holds_is_named_not_read(tmp_path: Path) -> None:
    out = tmp_path / "m.yaml"
    result = _init(
        str(ROOT / "examples" / "models" / "mlp.onnx"),
        "-o", str(out),
        "--validation", "pvc://datasets/digits-val.npz",
        "--calibration", "https://example.com/calib.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    optimization = _doc(out)["spec"]["optimization"]
    assert optimization["validation"] == {"uri": "pvc://datasets/digits-val.npz", "samples": 1000}
    calibration = optimization["quantization"]["calibration"]
    assert calibration == {"uri": "https://example.com/calib.npz", "samples": 128}
