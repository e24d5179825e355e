"""Pure: model facts + the user's choices -> an AcceleratedModel (wire form) and its comments.

Defaults aim at a first run that works and is honest: `auto` keeps the fastest candidate
inside an accuracy budget suited to the model's outputs (the original always fits, so the
Job never fails on the budget), and the runtime asks for what a small node can give.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from kubeaccel_api.constants import API_VERSION, KIND
from kubeaccel_api.v1alpha1 import MAX_NAME_LENGTH, DType, ModelContract, TensorSpec

from kubeaccel_runtime.init.probe import DataFacts, ModelFacts

MIB = 1024**2
GIB = 1024**3
# A serve process (Python, onnxruntime, the HTTP stack) holds ~100 MB before the model;
# sessions hold the weights a few times over (arena, optimized copies).
MEMORY_BASE = 256 * MIB
MEMORY_PER_MODEL_BYTE = 4
MEMORY_STEP = 64 * MIB
# Artifacts keep every shard of the current and the previous optimization.
STORAGE_PER_MODEL_BYTE = 4
MAX_BATCH = 64
MAX_REQUEST_BYTES = 16 * MIB
VALIDATION_SAMPLES = 1000
CALIBRATION_SAMPLES = 128
GENERATED_SAMPLES = 64
GPU_RESOURCE = "nvidia.com/gpu"
BYTES_PER_ELEMENT = {
    DType.FLOAT64: 8,
    DType.INT64: 8,
    DType.FLOAT32: 4,
    DType.INT32: 4,
    DType.FLOAT16: 2,
    DType.INT16: 2,
}


@dataclass(frozen=True)
class Note:
    """Comment lines above a key, and an end-of-line comment."""

    above: tuple[str, ...] = ()
    inline: str | None = None


@dataclass(frozen=True)
class Choices:
    """What the user chose on the command line (None/0: the defaults)."""

    name: str | None = None
    shards: int = 1
    gpus: int = 0
    calibration: DataFacts | None = None
    validation: DataFacts | None = None


@dataclass(frozen=True)
class Draft:
    """The resource as a wire dict, and comments keyed by dotted path (e.g. spec.inputs)."""

    doc: dict[str, Any]
    notes: dict[str, Note] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """metadata.name."""
        return str(self.doc["metadata"]["name"])


def name_from(file_name: str) -> str:
    """A DNS-1035 label from a file name: lower case, '-' for the rest, a letter first."""
    stem = file_name.rsplit(".", 1)[0] if "." in file_name.lstrip(".") else file_name
    label = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = f"model-{label}".rstrip("-")
    return label[:MAX_NAME_LENGTH].rstrip("-")


def _round_up(value: int, step: int) -> int:
    return max(step, math.ceil(value / step) * step)


def _quantity(value: int) -> str:
    return f"{value // GIB}Gi" if value % GIB == 0 else f"{value // MIB}Mi"


def is_classifier(contract: ModelContract) -> bool:
    """First output [batch, classes] in floating point with a fixed class count above 1.

    The same test the accuracy gate applies to the outputs it sees (accuracy.is_classifier).
    """
    first = contract.outputs[0]
    floating = first.dtype in (DType.FLOAT32, DType.FLOAT16, DType.FLOAT64)
    return floating and len(first.shape) == 2 and first.shape[1] > 1


def batchable(contract: ModelContract) -> bool:
    """Whether every input and output has a dynamic first (batch) dimension."""
    tensors = [*contract.inputs, *contract.outputs]
    return all(t.shape and t.shape[0] == -1 for t in tensors)


def _sample_bytes(inputs: list[TensorSpec]) -> int | None:
    """Bytes of one sample of every input in binary form (None if a dimension is dynamic)."""
    total = 0
    for tensor in inputs:
        dims = tensor.shape[1:] if tensor.shape and tensor.shape[0] == -1 else tensor.shape
        if any(d == -1 for d in dims):
            return None
        total += math.prod(dims) * BYTES_PER_ELEMENT.get(tensor.dtype, 1)
    return total


def _budget(contract: ModelContract, validation: DataFacts | None) -> tuple[dict[str, Any], Note]:
    shape = contract.outputs[0].shape
    if is_classifier(contract) and validation is not None and validation.labelled:
        return {"maxAccuracyDrop": 0.01, "minTop1Agreement": 0.97}, Note(
            (
                f"A classifier (first output {shape}) with labelled validation data: at most",
                "1 point of top-1 accuracy lost, and 97 % of samples keep their top-1 class.",
            )
        )
    if is_classifier(contract):
        return {"minTop1Agreement": 0.98}, Note(
            (
                f"A classifier (first output {shape}): 98 % of validation samples must keep",
                "the original's top-1 class. With labelled data (--validation data.npz with a",
                "`labels` array) add maxAccuracyDrop: 0.01.",
            )
        )
    return {"maxMeanRelError": 0.01}, Note(
        (
            "Outputs may differ from the original's by at most 1 % (relative L1 error).",
            "Other figures: maxAbsDiff, minTop1Agreement (classifiers), maxAccuracyDrop.",
        )
    )


def _data_source(facts: DataFacts, limit: int) -> dict[str, Any]:
    # The Job reads min(samples, what the file holds): the limit is safe for unread files.
    count = limit if facts.samples is None else min(facts.samples, limit)
    return {"uri": facts.uri, "samples": count}


def _optimization(facts: ModelFacts, choices: Choices, notes: dict[str, Note]) -> dict[str, Any]:
    quantization: dict[str, Any] = {"mode": "auto"}
    notes["spec.optimization.quantization"] = Note(
        (
            "auto builds every candidate (static and dynamic INT8, FP16 on GPU), measures",
            "them against the original in one interleaved run and keeps the fastest one",
            "inside the accuracy budget; the original always fits, so auto never fails.",
        )
    )
    if choices.calibration is not None:
        quantization["calibration"] = _data_source(choices.calibration, CALIBRATION_SAMPLES)
        notes["spec.optimization.quantization.calibration"] = Note(
            ("Real samples give static INT8 activation ranges that fit real requests.",)
        )
    else:
        notes["spec.optimization.quantization.mode"] = Note(
            inline="static INT8 calibrates on generated samples (--calibration is better)"
        )
    budget, budget_note = _budget(facts.contract, choices.validation)
    notes["spec.optimization.accuracyBudget"] = Note(
        (
            "An optimized model outside this budget is rejected and never deployed.",
            *budget_note.above,
        )
    )
    if choices.validation is not None:
        validation = _data_source(choices.validation, VALIDATION_SAMPLES)
        notes["spec.optimization.validation"] = Note(
            ("The budget is checked on these samples (arrays named by input, optional labels).",)
        )
    else:
        validation = {"samples": GENERATED_SAMPLES, "seed": 0}
        notes["spec.optimization.validation"] = Note(
            (
                "No validation data given: samples are generated from the input contract.",
                "Real data makes the budget meaningful: --validation data.npz (one array per",
                "input name, optional `labels`), or set uri: file://... here.",
            )
        )
    notes["spec.optimization.partition.shards"] = Note(
        inline="pipeline stages, each served by its own pods (shard 0 forwards to shard 1...)"
    )
    return {
        "quantization": quantization,
        "partition": {"shards": choices.shards, "balance": "memory"},
        "accuracyBudget": budget,
        "validation": validation,
    }


def _runtime(facts: ModelFacts, choices: Choices, notes: dict[str, Note]) -> dict[str, Any]:
    per_shard = facts.bytes // max(1, choices.shards)
    memory = _round_up(MEMORY_BASE + MEMORY_PER_MODEL_BYTE * per_shard, MEMORY_STEP)
    resources: dict[str, Any] = {"cpu": "1", "memory": _quantity(memory), "gpus": choices.gpus}
    notes["spec.runtime.resources"] = Note(
        ("Per pod, as requests and limits: one core and room for the model and the server.",)
    )
    runtime: dict[str, Any] = {
        "replicas": 1,
        "executionProvider": "auto",
        "resources": resources,
    }
    notes["spec.runtime.executionProvider"] = Note(
        inline="TensorRT, then CUDA, then CPU: the best the node has"
    )
    if choices.gpus:
        runtime["tolerations"] = [
            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
        notes["spec.runtime.tolerations"] = Note(
            ("GPU nodes are usually tainted so that only GPU workloads land there.",)
        )
    if batchable(facts.contract):
        runtime["batching"] = {"enabled": True, "maxBatchSize": 32, "maxDelayMs": 2}
        notes["spec.runtime.batching"] = Note(
            ("Merge concurrent requests into one run of up to 32 samples, waiting at most 2 ms.",)
        )
    else:
        runtime["batching"] = {"enabled": False}
        notes["spec.runtime.batching"] = Note(
            ("Off: not every input and output has a dynamic first (batch) dimension.",)
        )
    return runtime


def _contract(facts: ModelFacts, notes: dict[str, Note]) -> tuple[list[Any], list[Any]]:
    origin = "given with --input" if facts.declared_inputs else "read from the model"
    notes["spec.inputs"] = Note(
        (
            f"The request contract ({origin}): every request is checked against it before",
            "the model runs, and anything else is a 400. -1 is a dynamic dimension. Add",
            "range: {min: 0, max: 1} to an input to refuse values outside it. Without",
            "inputs/outputs the optimization Job reads them from the model itself.",
        )
    )

    def wire(tensors: list[TensorSpec]) -> list[Any]:
        return [t.to_wire() for t in tensors]

    return wire(facts.contract.inputs), wire(facts.contract.outputs)


def _limits(contract: ModelContract, notes: dict[str, Note]) -> dict[str, Any]:
    per_sample = _sample_bytes(contract.inputs)
    max_batch = MAX_BATCH
    if per_sample:
        max_batch = max(1, min(MAX_BATCH, MAX_REQUEST_BYTES // per_sample))
    notes["spec.limits"] = Note(
        ("Checked before anything runs: a larger body is a 413, a larger batch a 400.",)
    )
    return {"maxBatch": max_batch, "maxRequestBytes": MAX_REQUEST_BYTES}


def build_draft(facts: ModelFacts, choices: Choices) -> Draft:
    """The AcceleratedModel for `facts` with `choices` applied, with its comments."""
    notes: dict[str, Note] = {}
    name = choices.name or name_from(facts.file_name)
    source = {"uri": facts.uri, "format": facts.format.value, "sha256": facts.sha256}
    notes["spec.source.uri"] = Note(
        (
            "file:// paths are relative to the directory kubeaccel runs in. On a cluster,",
            "copy the model to a volume and use pvc://<claim>/<path> (or http(s)://, s3://).",
        )
    )
    notes["spec.source.sha256"] = Note(
        ("Checked before the model is loaded: a file with other bytes deploys nothing.",)
    )
    inputs, outputs = _contract(facts, notes)
    storage = _round_up(STORAGE_PER_MODEL_BYTE * facts.bytes, GIB)
    notes["spec.storage"] = Note(("Artifacts (optimized shards, manifest, report) live here.",))
    spec: dict[str, Any] = {
        "source": source,
        "optimization": _optimization(facts, choices, notes),
        "runtime": _runtime(facts, choices, notes),
        "inputs": inputs,
        "outputs": outputs,
        "limits": _limits(facts.contract, notes),
        "storage": {"type": "pvc", "pvc": {"size": _quantity(storage)}},
    }
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}
    return Draft(doc, notes)
