"""Shared fixtures of the runtime tests. Optimizer fixtures are prefixed `opt_`.

The optimizer's models are built here with onnx.helper and a fixed seed: small enough to
optimize in well under a second, real enough for every pass to do its work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, TensorProto, helper, numpy_helper

OPT_OPSET = 17
# onnxruntime 1.31 reads IR version <= 13; onnx.helper defaults to a newer one.
OPT_IR_VERSION = 9


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: dict[str, np.ndarray],
    name: str,
) -> ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPT_OPSET)], ir_version=OPT_IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def _weights(
    rng: np.random.Generator, shape: tuple[int, ...], weak: int = 0, axis: int = 0
) -> np.ndarray:
    """He-style weights; the last `weak` slices along `axis` are scaled down 100x."""
    fan_in = int(np.prod(shape)) // shape[axis]
    w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    if weak:
        index = [slice(None)] * len(shape)
        index[axis] = slice(shape[axis] - weak, None)
        w[tuple(index)] *= 0.01
    return w.astype(np.float32)


def build_mlp(
    seed: int = 0, features: int = 64, hidden: int = 48, classes: int = 10, weak: int = 0
) -> ModelProto:
    """input[-1, features] -> MatMul+Add+Relu -> MatMul+Add+Relu -> Gemm -> logits[-1, classes]."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": _weights(rng, (features, hidden), weak, axis=1),
        "b1": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
        "w2": _weights(rng, (hidden, hidden), weak, axis=1),
        "b2": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
        "w3": _weights(rng, (classes, hidden)),
        "b3": np.zeros(classes, np.float32),
    }
    if weak:
        inits["b1"][-weak:] = 0.0
        inits["b2"][-weak:] = 0.0
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Relu", ["h1b"], ["a1"], name="relu1"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "b2"], ["h2b"], name="fc2_bias"),
        helper.make_node("Relu", ["h2b"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["logits"], name="head", transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
        "mlp",
    )


def build_cnn(seed: int = 0, weak: int = 0) -> ModelProto:
    """input[-1,1,8,8] -> Conv8+BN+Relu+MaxPool -> Conv16+Relu+MaxPool -> Flatten -> Gemm32 -> Relu -> Gemm10."""
    rng = np.random.default_rng(seed)
    inits = {
        "c1w": _weights(rng, (8, 1, 3, 3), weak // 2),
        "c1b": (rng.standard_normal(8) * 0.05).astype(np.float32),
        "bn_s": rng.uniform(0.8, 1.2, 8).astype(np.float32),
        "bn_b": (rng.standard_normal(8) * 0.05).astype(np.float32),
        "bn_m": (rng.standard_normal(8) * 0.05).astype(np.float32),
        "bn_v": rng.uniform(0.8, 1.2, 8).astype(np.float32),
        "c2w": _weights(rng, (16, 8, 3, 3), weak),
        "c2b": (rng.standard_normal(16) * 0.05).astype(np.float32),
        "f1w": _weights(rng, (32, 16 * 2 * 2), 2 * weak),
        "f1b": (rng.standard_normal(32) * 0.05).astype(np.float32),
        "f2w": _weights(rng, (10, 32)),
        "f2b": np.zeros(10, np.float32),
    }
    if weak:
        inits["c1b"][-(weak // 2) :] = 0.0
        inits["bn_b"][-(weak // 2) :] = 0.0
        inits["bn_m"][-(weak // 2) :] = 0.0
        inits["c2b"][-weak:] = 0.0
        inits["f1b"][-2 * weak :] = 0.0
    nodes = [
        helper.make_node("Conv", ["input", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn1"], name="bn1"
        ),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node(
            "MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Flatten", ["p2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "f1w", "f1b"], ["f1"], name="fc1", transB=1),
        helper.make_node("Relu", ["f1"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "f2w", "f2b"], ["logits"], name="fc2", transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
        "cnn",
    )


def build_residual(seed: int = 0) -> ModelProto:
    """conv1 -> relu -> conv2 -> Add(conv2, relu) -> GlobalAveragePool -> Flatten -> Gemm: conv1 and
    conv2 feed a residual Add and must be skipped by structured pruning."""
    rng = np.random.default_rng(seed)
    inits = {
        "c1w": _weights(rng, (8, 2, 3, 3)),
        "c2w": _weights(rng, (8, 8, 3, 3)),
        "c3w": _weights(rng, (4, 8, 1, 1)),
        "fw": _weights(rng, (3, 4)),
    }
    nodes = [
        helper.make_node("Conv", ["input", "c1w"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["res"], name="residual"),
        helper.make_node("Conv", ["res", "c3w"], ["c3"], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fw"], ["out"], name="fc", transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])],
        inits,
        "residual",
    )


def build_attention_block(seed: int = 0, d: int = 32, seq: int = 8) -> ModelProto:
    """A tiny transformer-style block: LayerNorm -> QKV MatMuls -> Softmax attention -> FFN."""
    rng = np.random.default_rng(seed)
    inits = {
        "ln_s": np.ones(d, np.float32),
        "ln_b": np.zeros(d, np.float32),
        "wq": _weights(rng, (d, d)),
        "wk": _weights(rng, (d, d)),
        "wv": _weights(rng, (d, d)),
        "scale": np.array(1.0 / np.sqrt(d), np.float32),
        "w1": _weights(rng, (d, 2 * d)),
        "w2": _weights(rng, (2 * d, d)),
    }
    nodes = [
        helper.make_node(
            "LayerNormalization", ["input", "ln_s", "ln_b"], ["ln"], axis=-1, name="ln"
        ),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["ln", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["ln", "wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scaled"),
        helper.make_node("Softmax", ["scaled"], ["attn"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"], name="ctx"),
        helper.make_node("Add", ["ctx", "input"], ["res1"], name="res1"),
        helper.make_node("MatMul", ["res1", "w1"], ["ff1"], name="ff1"),
        helper.make_node("Relu", ["ff1"], ["ff1r"], name="ff1_relu"),
        helper.make_node("MatMul", ["ff1r", "w2"], ["ff2"], name="ff2"),
        helper.make_node("Add", ["ff2", "res1"], ["output"], name="res2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", seq, d])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", seq, d])],
        inits,
        "attention",
    )


def build_embedder(
    seed: int = 0,
    vocab: int = 1000,
    dim: int = 16,
    seq: int = 8,
    hidden: int = 24,
    classes: int = 4,
) -> ModelProto:
    """input_ids[-1, seq] int64 -> Gather(embedding table) -> mean over tokens -> MatMul+Add+Relu
    -> Gemm -> logits: over 90 % of the weights are in the embedding table, like a small BERT."""
    rng = np.random.default_rng(seed)
    inits = {
        "table": rng.standard_normal((vocab, dim)).astype(np.float32),
        "w": _weights(rng, (dim, hidden)),
        "b": (rng.standard_normal(hidden) * 0.1).astype(np.float32),
        "head_w": _weights(rng, (classes, hidden)),
        "head_b": np.zeros(classes, np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="embed", axis=0),
        helper.make_node("ReduceMean", ["emb"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="fc_bias"),
        helper.make_node("Relu", ["hb"], ["a"], name="relu"),
        helper.make_node("Gemm", ["a", "head_w", "head_b"], ["logits"], name="head", transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
        "embedder",
    )


def build_outlier_mlp(seed: int = 0, features: int = 32, hidden: int = 32) -> ModelProto:
    """An MLP whose first hidden layer has one unit 1000x larger than the rest, which the next
    layer ignores: per-tensor INT8 of that activation crushes every other unit, so quantizing
    fc2's input breaks the model while fc2 in FP32 (mixed precision) restores it."""
    rng = np.random.default_rng(seed)
    w1 = _weights(rng, (features, hidden))
    w1[:, 0] = np.abs(w1[:, 0]) * 1000.0
    w2 = _weights(rng, (hidden, hidden))
    w2[0, :] = 0.0
    inits = {
        "w1": w1,
        "w2": w2,
        "w3": _weights(rng, (10, hidden)),
        "b3": np.zeros(10, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["logits"], name="head", transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
        "outlier",
    )


@dataclass(frozen=True)
class OptModels:
    """Builders of the optimizer's test models (fresh protos on every call)."""

    mlp: Callable[..., ModelProto] = build_mlp
    cnn: Callable[..., ModelProto] = build_cnn
    residual: Callable[..., ModelProto] = build_residual
    attention: Callable[..., ModelProto] = build_attention_block
    embedder: Callable[..., ModelProto] = build_embedder
    outlier: Callable[..., ModelProto] = build_outlier_mlp


@pytest.fixture(scope="session")
def opt_models() -> OptModels:
    """Builders of small deterministic ONNX models for optimizer tests."""
    return OptModels()


def opt_run_model(model: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model on one thread (tests share two cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return [np.asarray(x) for x in session.run(None, feeds)]


@pytest.fixture(scope="session")
def opt_run() -> Callable[[ModelProto, dict[str, np.ndarray]], list[np.ndarray]]:
    """Run a model on one onnxruntime thread and return its outputs."""
    return opt_run_model


def opt_write_spec(
    directory: Path,
    model_file: str,
    sha256: str | None,
    *,
    name: str = "tiny",
    inputs: list[dict[str, object]] | None = None,
    optimization: dict[str, object] | None = None,
    runtime: dict[str, object] | None = None,
) -> Path:
    """An AcceleratedModel YAML next to the model, with a file:// URI relative to `directory`."""
    import yaml

    source: dict[str, object] = {"uri": f"file://{model_file}"}
    if sha256 is None:
        source["allowUnverified"] = True
    else:
        source["sha256"] = sha256
    doc = {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": name},
        "spec": {
            "source": source,
            "optimization": optimization or {},
            "runtime": runtime or {},
            "inputs": inputs or [{"name": "input", "dtype": "float32", "shape": [-1, 64]}],
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="session")
def opt_spec_writer() -> Callable[..., Path]:
    """Write an AcceleratedModel YAML pointing at a model file (see opt_write_spec)."""
    return opt_write_spec


def opt_save_external(model: ModelProto, path: Path, location: str) -> None:
    """Save `model` to `path` with every weight in the external file `location` beside it."""
    onnx.save_model(
        model, str(path), save_as_external_data=True, location=location, size_threshold=0
    )


@pytest.fixture(scope="session")
def opt_external_saver() -> Callable[[ModelProto, Path, str], None]:
    """Save a model with its weights in an external data file (see opt_save_external)."""
    return opt_save_external


def opt_export_torch(module: object, features: int, path: Path) -> None:
    """Export a fresh torch module taking [batch, features] to ONNX, as a user would:
    named input `features` and output `scores`, a dynamic batch, weights inside the file."""
    import torch

    torch.onnx.export(
        module,
        (torch.randn(2, features),),
        str(path),
        input_names=["features"],
        output_names=["scores"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        verbose=False,
    )


@pytest.fixture(scope="session")
def opt_torch_exporter() -> Callable[[object, int, Path], None]:
    """Export a torch module to ONNX (see opt_export_torch); skips without torch."""
    pytest.importorskip("torch")
    return opt_export_torch
