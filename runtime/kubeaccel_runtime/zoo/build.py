"""Train, export and verify every example model, and write its data files.

For each recipe: seed torch, train on its dataset's train split, export to ONNX, run the
held-out split through onnxruntime (accuracy, and agreement with torch), then write
`<name>.onnx` and `<dataset>-{train,calib,val}-<name>.npz` (arrays keyed by the model's
input name, plus "labels" in the train and val files). Two datasets: scikit-learn's bundled
handwritten digits (images) and generated topic documents (token ids, `topics`). Same seed,
same machine: same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from kubeaccel_runtime.zoo import cnn, data, embedder, mlp, topics, transformer
from kubeaccel_runtime.zoo.export import INPUT_NAME, OUTPUT_NAME, export_onnx, serialize
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
DIGITS = "digits"
TOPICS = "topics"


@dataclass(frozen=True)
class Recipe:
    """How to make, feed and train one example model."""

    name: str
    summary: str
    make_model: Callable[[], nn.Module]
    # Dataset samples (digits: (N, 8, 8) images; topics: token ids) -> model inputs.
    make_inputs: Callable[[npt.NDArray[Any]], npt.NDArray[Any]]
    train: TrainConfig
    # Group-lasso strength on the model's `prunable_layers()`; 0 trains plainly.
    group_lasso: float = 0.0
    dataset: str = DIGITS
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = (OUTPUT_NAME,)
    # The module exported instead of the trained one (e.g. to add outputs); None: itself.
    for_export: Callable[[nn.Module], nn.Module] | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset's splits as raw samples and labels (the recipe turns samples into inputs)."""

    name: str
    samples: dict[str, npt.NDArray[Any]]
    labels: dict[str, data.IntArray]


def load_dataset(name: str, seed: int = data.DEFAULT_SEED) -> Dataset:
    """Every split of a dataset: digits from scikit-learn, topics generated."""
    if name == DIGITS:
        digits = data.load_digits_data()
        split = data.split_indices(digits.labels, seed)
        parts = dict(zip(SPLITS, (split.train, split.calib, split.val), strict=True))
        return Dataset(
            name,
            {k: digits.images[idx] for k, idx in parts.items()},
            {k: digits.labels[idx] for k, idx in parts.items()},
        )
    if name == TOPICS:
        drawn = {k: topics.split(k, seed) for k in SPLITS}
        return Dataset(
            name, {k: v[0] for k, v in drawn.items()}, {k: v[1] for k, v in drawn.items()}
        )
    raise ValueError(f"unknown dataset {name!r}; known: {DIGITS}, {TOPICS}")


def _identity(samples: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return samples


_DATASET_NAMES = {
    DIGITS: "scikit-learn load_digits",
    TOPICS: "generated topic documents (kubeaccel_runtime.zoo.topics)",
}


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
        Recipe(
            name="embedder",
            summary=(
                f"token embedding {topics.VOCAB}x{embedder.D_MODEL} + {embedder.LAYERS} encoder "
                f"layer, {topics.SEQ_LEN} int64 token ids -> topic logits + sentence embedding"
            ),
            make_model=embedder.TopicEmbedder,
            make_inputs=_identity,
            # Large batches: each step updates the whole embedding table (AdamW is dense).
            train=TrainConfig(epochs=3, learning_rate=5e-3, batch_size=128, weight_decay=1e-2),
            dataset=TOPICS,
            input_name="input_ids",
            output_names=(OUTPUT_NAME, "embedding"),
            for_export=embedder.for_export,
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
    return out_dir / f"{RECIPES[name].dataset}-{split}-{name}.npz"


def output_files(out_dir: Path, names: Sequence[str]) -> list[Path]:
    """Every file a build of `names` writes."""
    files = []
    for name in names:
        files.append(out_dir / f"{name}.onnx")
        files.extend(data_file(out_dir, split, name) for split in SPLITS)
    return files


def onnx_logits(
    model_bytes: bytes, inputs: npt.NDArray[Any], input_name: str = INPUT_NAME
) -> npt.NDArray[np.float32]:
    """Logits (the first output) of an ONNX model through onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    out = session.run(None, {input_name: inputs})[0]
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
    inputs: npt.NDArray[Any],
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
    dataset: Dataset,
    out_dir: Path,
    seed: int = data.DEFAULT_SEED,
    epochs: int | None = None,
    train_samples: int | None = None,
) -> BuiltModel:
    """Train, export, verify and write one model and its data files.

    `epochs` and `train_samples` (the first N of the train split) make quick smoke builds;
    the data files always hold the whole splits.
    """
    if dataset.name != recipe.dataset:
        raise ValueError(f"{recipe.name} trains on {recipe.dataset}, not {dataset.name}")
    inputs = {k: recipe.make_inputs(v) for k, v in dataset.samples.items()}
    labels = dataset.labels
    train_x, train_y = inputs["train"][:train_samples], labels["train"][:train_samples]
    with deterministic_torch(seed):
        model, result = train_model(recipe, train_x, train_y, seed, epochs)
        val_x, val_y = inputs["val"], labels["val"]
        torch_logits = predict(model, val_x)
        acc_torch = accuracy(torch_logits, val_y)
        exported = recipe.for_export(model) if recipe.for_export is not None else model
        proto = export_onnx(
            exported,
            torch.from_numpy(np.ascontiguousarray(val_x[:1])),
            metadata={
                "kubeaccel.zoo/model": recipe.name,
                "kubeaccel.zoo/summary": recipe.summary,
                "kubeaccel.zoo/dataset": _DATASET_NAMES[recipe.dataset],
                "kubeaccel.zoo/seed": str(seed),
                "kubeaccel.zoo/epochs": str(epochs or recipe.train.epochs),
                "kubeaccel.zoo/train_samples": str(len(train_x)),
                "kubeaccel.zoo/group_lasso": str(recipe.group_lasso),
                "kubeaccel.zoo/val_accuracy": f"{acc_torch:.4f}",
            },
            input_name=recipe.input_name,
            output_names=recipe.output_names,
        )
        params = sum(p.numel() for p in model.parameters())
    payload = serialize(proto)
    ort_logits = onnx_logits(payload, val_x, recipe.input_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_file = out_dir / f"{recipe.name}.onnx"
    _write_atomic(model_file, payload)
    data_files = []
    for split_name in SPLITS:
        arrays: dict[str, npt.NDArray[np.generic]] = {recipe.input_name: inputs[split_name]}
        if split_name != "calib":
            arrays[LABELS_KEY] = labels[split_name]
        path = data_file(out_dir, split_name, recipe.name)
        data.save_npz(path, arrays)
        data_files.append(path)
    return BuiltModel(
        name=recipe.name,
        summary=recipe.summary,
        model_file=model_file,
        data_files=tuple(data_files),
        input_shape=(-1, *inputs["val"].shape[1:]),
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
    datasets: dict[str, Dataset] = {}
    built = []
    for name in chosen:
        recipe = RECIPES[name]
        if recipe.dataset not in datasets:
            datasets[recipe.dataset] = load_dataset(recipe.dataset, seed)
        dataset = datasets[recipe.dataset]
        model = build_model(recipe, dataset, out_dir, seed, epochs, train_samples)
        built.append(model)
        if on_built is not None:
            on_built(model)
    return built
