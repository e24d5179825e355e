"""Reading the request contract from a model, and checking a written one against it."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from kubeaccel_api.contract import contract_problems
from kubeaccel_api.v1alpha1 import DType, TensorSpec
from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.artifact_manifest import TensorInfo
from kubeaccel_runtime.model_contract import (
    ContractUnreadable,
    contract_from_infos,
    read_contract,
)
from onnx import TensorProto, helper


def _relu(inputs: list[onnx.ValueInfoProto], output: onnx.ValueInfoProto) -> onnx.ModelProto:
    """Relu over the first input; the model is not checked (some are invalid on purpose)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", [inputs[0].name], [output.name])], "g", inputs, [output]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_dynamic_and_symbolic_dimensions_become_minus_one(opt_models) -> None:  # type: ignore[no-untyped-def]
    contract = read_contract(opt_models.cnn())
    assert [t.to_wire() for t in contract.inputs] == [
        {"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}
    ]
    assert [t.to_wire() for t in contract.outputs] == [
        {"name": "logits", "dtype": "float32", "shape": [-1, 10]}
    ]


def test_initializers_listed_as_inputs_are_not_part_of_the_contract(opt_models) -> None:  # type: ignore[no-untyped-def]
    model = opt_models.mlp()
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    model.graph.input.append(helper.make_tensor_value_info("w1", w1.data_type, list(w1.dims)))
    assert [t.name for t in read_contract(model).inputs] == ["input"]


def test_a_nameless_input_is_refused_with_what_to_do() -> None:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    model = _relu([helper.make_tensor_value_info("", TensorProto.FLOAT, ["n", 2])], out)
    with pytest.raises(ContractUnreadable, match=r"input #0 has no name.*input_names=\[\.\.\.\]"):
        read_contract(model)


def test_a_rankless_input_or_output_is_refused_with_what_to_do() -> None:
    model = _relu(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
    )
    with pytest.raises(ContractUnreadable) as info:
        read_contract(model)
    message = str(info.value)
    assert "input 'x' has no rank" in message and "output 'y' has no rank" in message
    assert "update_inputs_outputs_dims" in message


def test_the_onnx_loader_gives_the_same_words_as_the_checker_would_not(tmp_path: Path) -> None:
    model = _relu(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
    )
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(onnx_io.ModelLoadError, match="input 'x' has no rank"):
        onnx_io.load(path)


def test_names_and_ranks_a_spec_cannot_hold_are_refused() -> None:
    info = TensorInfo(name="0", dtype=DType.FLOAT32, shape=[-1, 4])
    deep = TensorInfo(name="deep", dtype=DType.FLOAT32, shape=[1] * 9)
    with pytest.raises(ContractUnreadable) as exc:
        contract_from_infos([info], [deep])
    assert "input '0': a contract cannot name it" in str(exc.value)
    assert "output 'deep' has rank 9" in str(exc.value)


def test_an_unsupported_element_type_is_refused() -> None:
    model = _relu(
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["n"])],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
    )
    with pytest.raises(ContractUnreadable, match="unsupported element type STRING"):
        read_contract(model)


def test_a_written_contract_is_checked_name_dtype_and_every_fixed_dimension() -> None:
    model_in = [TensorInfo(name="x", dtype=DType.FLOAT32, shape=[-1, 4])]
    model_out = [TensorInfo(name="y", dtype=DType.FLOAT32, shape=[-1, 2])]
    good = [TensorSpec(name="x", dtype=DType.FLOAT32, shape=[-1, 4])]
    assert contract_problems(good, None, model_in, model_out) == []
    wrong = [TensorSpec(name="x", dtype=DType.FLOAT16, shape=[-1, 5])]
    problems = contract_problems(wrong, None, model_in, model_out)
    assert problems == [
        "spec.inputs[0] (x): dtype float16, the model's is float32",
        "spec.inputs[0] (x): shape[1] is 5, the model fixes it to 4",
    ]
    outputs = [TensorSpec(name="z", dtype=DType.FLOAT32, shape=[-1, 2])]
    [problem] = contract_problems(good, outputs, model_in, model_out, where="--input")
    assert problem == "--input.outputs[0] (z): the model has no such tensor (has: y)"
