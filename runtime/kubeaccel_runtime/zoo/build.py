"""Train, export and verify every example model, and write its data files.

For each recipe: seed torch, train on the digits train split, export to ONNX, run the
held-out split through onnxruntime (accuracy, and agreement with torch), then write
`<name>.onnx` and `digits-{train,calib,val}-<name>.npz` (arrays keyed "input", plus
"labels" in the train and val files). Same seed, same machine: same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from kubeaccel_runtime.zoo import cnn, data, mlp, transformer
from kubeaccel_runtime.zoo.export import INPUT_NAME, export_onnx, serialize
from kubeaccel_runtime.zoo.train import (
    TrainConfig,
    TrainResult,
    accuracy,
    deterministic_torch,
    group_lasso,
    predict,
    train_classifier,
)

LABELS_KEY = "labels"
SPLITS = ("train", "calib", "val")


@dataclass(frozen=True)
class Recipe:
    """How to make, feed and train one example model."""

    name: str
    summary: str
    make_model: Callable[[], nn.Module]
    make_inputs: Callable[[data.FloatArray], data.FloatArray]
    train: TrainConfig
    # Group-lasso strength on the model's `prunable_layers()`; 0 trains plainly.
    group_lasso: float = 0.0


def _cnn_inputs(images: data.FloatArray) -> data.FloatArray:
    return data.upscale(images, cnn.INPUT_SIZE)[:, None, :, :]


def _mlp_inputs(images: data.FloatArray) -> data.FloatArray:
    return data.upscale(images, mlp.INPUT_SIZE).reshape(len(images), -1)


def _transformer_inputs(images: data.FloatArray) -> data.FloatArray:
    # Rows of the 32x32 image are the tokens: (N, 32 tokens, 32 features).
    return data.upscale(images, transformer.SEQ_LEN)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="cnn",
            summary=f"conv 32/64/100 + dense 512, input 1x{cnn.INPUT_SIZE}x{cnn.INPUT_SIZE}",
            make_model=cnn.DigitsCNN,
            make_inputs=_cnn_inputs,
            train=TrainConfig(epochs=10, learning_rate=2e-3),
            # Trained for structured sparsity so that the 50 % channel pruning of
            # examples/cnn.yaml holds accuracy without a fine-tune inside the Job.
            group_lasso=5e-3,
        ),
        Recipe(
            name="mlp",
            summary=f"{mlp.FEATURES}-{mlp.HIDDEN}-{mlp.HIDDEN}-10, input 28x28 flattened",
            make_model=mlp.DigitsMLP,
            make_inputs=_mlp_inputs,
            train=TrainConfig(epochs=20, learning_rate=1e-3),
        ),
        Recipe(
            name="transformer",
            summary=(
                f"encoder {transformer.LAYERS}x d{transformer.D_MODEL} h{transformer.HEADS} "
                f"ffn{transformer.FFN}, {transformer.SEQ_LEN} row tokens"
            ),
            make_model=transformer.TinyTransformer,
            make_inputs=_transformer_inputs,
            train=TrainConfig(epochs=10, learning_rate=1e-3),
        ),
    )
}


@dataclass(frozen=True)
class BuiltModel:
    """One built model: its files and what was measured on the held-out split."""

    name: str
    summary: str
    model_file: Path
    data_files: tuple[Path, ...]
    input_shape: tuple[int, ...]
    params: int
    bytes: int
    sha256: str
    train_seconds: float
    val_samples: int
    accuracy_torch: float
    accuracy_onnx: float
    max_abs_diff: float


def data_file(out_dir: Path, split: str, name: str) -> Path:
    """Path of one split's data file for model `name`."""
    return out_dir / f"digits-{split}-{name}.npz"


def output_files(out_dir: Path, names: Sequence[str]) -> list[Path]:
    """Every file a build of `names` writes."""
    files = []
    for name in names:
        files.append(out_dir / f"{name}.onnx")
        files.extend(data_file(out_dir, split, name) for split in SPLITS)
    return files


def onnx_logits(model_bytes: bytes, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Logits of an ONNX model through onnxruntime's CPU provider, one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    out = session.run(None, {INPUT_NAME: inputs})[0]
    return np.asarray(out, dtype=np.float32)


def _regularizer(model: nn.Module, strength: float) -> Callable[[], torch.Tensor] | None:
    """The group-lasso term for `model`, or None when `strength` is 0."""
    if strength == 0.0:
        return None
    layers_of = getattr(model, "prunable_layers", None)
    if layers_of is None:
        raise ValueError(f"{type(model).__name__} has no prunable_layers() for group lasso")
    layers = layers_of()
    return lambda: strength * group_lasso(layers)


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)


def train_model(
    recipe: Recipe,
    inputs: data.FloatArray,
    labels: data.IntArray,
    seed: int = data.DEFAULT_SEED,
    epochs: int | None = None,
) -> tuple[nn.Module, TrainResult]:
    """A freshly seeded model of `recipe` trained on `inputs` (call inside deterministic_torch)."""
    config = recipe.train if epochs is None else replace(recipe.train, epochs=epochs)
    model = recipe.make_model()
    regularizer = _regularizer(model, recipe.group_lasso)
    result = train_classifier(model, inputs, labels, config, seed, regularizer)
    return model, result


def build_model(
    recipe: Recipe,
    digits: data.Digits,
    split: data.SplitIndices,
    out_dir: Path,
    seed: int = data.DEFAULT_SEED,
    epochs: int | None = None,
    train_samples: int | None = None,
) -> BuiltModel:
    """Train, export, verify and write one model and its data files.

    `epochs` and `train_samples` (the first N of the train split) make quick smoke builds;
    the data files always hold the whole splits.
    """
    inputs = recipe.make_inputs(digits.images)
    labels = digits.labels
    train_idx = split.train[:train_samples]
    with deterministic_torch(seed):
        model, result = train_model(recipe, inputs[train_idx], labels[train_idx], seed, epochs)
        val_x, val_y = inputs[split.val], labels[split.val]
        torch_logits = predict(model, val_x)
        acc_torch = accuracy(torch_logits, val_y)
        proto = export_onnx(
            model,
            torch.from_numpy(np.ascontiguousarray(val_x[:1])),
            metadata={
                "kubeaccel.zoo/model": recipe.name,
                "kubeaccel.zoo/summary": recipe.summary,
                "kubeaccel.zoo/dataset": "scikit-learn load_digits",
                "kubeaccel.zoo/seed": str(seed),
                "kubeaccel.zoo/epochs": str(epochs or recipe.train.epochs),
                "kubeaccel.zoo/train_samples": str(len(train_idx)),
                "kubeaccel.zoo/group_lasso": str(recipe.group_lasso),
                "kubeaccel.zoo/val_accuracy": f"{acc_torch:.4f}",
            },
        )
        params = sum(p.numel() for p in model.parameters())
    payload = serialize(proto)
    ort_logits = onnx_logits(payload, val_x)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_file = out_dir / f"{recipe.name}.onnx"
    _write_atomic(model_file, payload)
    data_files = []
    for split_name, idx in zip(SPLITS, (split.train, split.calib, split.val), strict=True):
        arrays: dict[str, npt.NDArray[np.generic]] = {INPUT_NAME: inputs[idx]}
        if split_name != "calib":
            arrays[LABELS_KEY] = labels[idx]
        path = data_file(out_dir, split_name, recipe.name)
        data.save_npz(path, arrays)
        data_files.append(path)
    return BuiltModel(
        name=recipe.name,
        summary=recipe.summary,
        model_file=model_file,
        data_files=tuple(data_files),
        input_shape=(-1, *inputs.shape[1:]),
        params=params,
        bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        train_seconds=result.seconds,
        val_samples=len(val_y),
        accuracy_torch=acc_torch,
        accuracy_onnx=accuracy(ort_logits, val_y),
        max_abs_diff=float(np.max(np.abs(ort_logits - torch_logits))),
    )


def build_all(
    out_dir: Path,
    names: Sequence[str] | None = None,
    seed: int = data.DEFAULT_SEED,
    epochs: int | None = None,
    on_built: Callable[[BuiltModel], None] | None = None,
    train_samples: int | None = None,
) -> list[BuiltModel]:
    """Build the named models (all by default) into `out_dir`."""
    chosen = list(RECIPES) if names is None else list(names)
    unknown = [n for n in chosen if n not in RECIPES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(RECIPES)}")
    digits = data.load_digits_data()
    split = data.split_indices(digits.labels, seed)
    built = []
    for name in chosen:
        model = build_model(RECIPES[name], digits, split, out_dir, seed, epochs, train_samples)
        built.append(model)
        if on_built is not None:
            on_built(model)
    return built
