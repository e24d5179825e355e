"""Load, check, save and inspect ONNX models (the only place ONNX files are read or written)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from kubeaccel_api.v1alpha1 import DType
from onnx import ModelProto, TensorProto, ValueInfoProto

from kubeaccel_runtime.artifact_manifest import TensorInfo

# protobuf refuses messages over 2 GiB; above this, weights go to an external data file.
EXTERNAL_THRESHOLD = 1_800_000_000

DTYPE_BY_ONNX: dict[int, DType] = {
    TensorProto.FLOAT: DType.FLOAT32,
    TensorProto.FLOAT16: DType.FLOAT16,
    TensorProto.DOUBLE: DType.FLOAT64,
    TensorProto.INT8: DType.INT8,
    TensorProto.UINT8: DType.UINT8,
    TensorProto.INT16: DType.INT16,
    TensorProto.INT32: DType.INT32,
    TensorProto.INT64: DType.INT64,
    TensorProto.BOOL: DType.BOOL,
}
NUMPY_BY_DTYPE: dict[DType, type[np.generic]] = {
    DType.FLOAT32: np.float32,
    DType.FLOAT16: np.float16,
    DType.FLOAT64: np.float64,
    DType.INT8: np.int8,
    DType.UINT8: np.uint8,
    DType.INT16: np.int16,
    DType.INT32: np.int32,
    DType.INT64: np.int64,
    DType.BOOL: np.bool_,
}


class ModelLoadError(ValueError):
    """A file that is not a valid ONNX model; the message says why."""


class NotOnnx(ModelLoadError):
    """The bytes do not parse as an ONNX model at all (another format, or garbage)."""


def external_data_locations(model: ModelProto) -> list[str]:
    """Relative file names of external weight data the model refers to."""
    names: set[str] = set()
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return sorted(names)


def _all_tensors(model: ModelProto) -> Iterable[TensorProto]:
    yield from onnx.external_data_helper._get_all_tensors(model)


def is_safe_relative(name: str) -> bool:
    """A relative path that stays inside its directory (external data must not escape)."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def peek_external_data(path: Path) -> list[str]:
    """External data file names a model file refers to (the weights are not read).

    Raises:
        ModelLoadError: unreadable or not ONNX.
    """
    try:
        return external_data_locations(onnx.load(str(path), load_external_data=False))
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # protobuf raises DecodeError and friends, not one base class
        raise NotOnnx(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None


def signature_problems(model: ModelProto) -> list[str]:
    """Graph inputs/outputs no request contract can describe: no name, or no rank.

    onnx.checker rejects both too, in words a first-time user cannot act on.
    """
    problems: list[str] = []
    for kind, values in (("input", graph_inputs(model)), ("output", list(model.graph.output))):
        for position, value in enumerate(values):
            if not value.name:
                problems.append(
                    f"{kind} #{position} has no name; requests name every tensor: re-export "
                    f"with names, e.g. torch.onnx.export(..., {kind}_names=[...])"
                )
            elif value.type.HasField("tensor_type") and not value.type.tensor_type.HasField(
                "shape"
            ):
                problems.append(
                    f"{kind} {value.name!r} has no rank (the model records no shape for it); "
                    "requests are checked against every dimension: re-export with shapes, or "
                    "set them with onnx.tools.update_model_dims.update_inputs_outputs_dims"
                )
    return problems


def load(path: Path, *, check: bool = True, weights: bool = True) -> ModelProto:
    """Load an ONNX file (external data next to it included) and run onnx.checker.

    `weights=False` checks that external weight files exist but leaves them unread (for
    reading the signature of a large model).

    Raises:
        ModelLoadError: unreadable, not ONNX, unsafe external data path, a nameless or
            rankless input/output, or failing the checker.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # protobuf raises DecodeError and friends, not one base class
        raise NotOnnx(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node and not model.graph.output:
        raise NotOnnx(f"{path}: not an ONNX model (empty graph)")
    locations = external_data_locations(model)
    for location in locations:
        if not is_safe_relative(location):
            raise ModelLoadError(f"{path}: external data path {location!r} escapes its directory")
        if not (path.parent / location).is_file():
            raise ModelLoadError(
                f"{path}: the model keeps its weights in {location!r}, which is missing: "
                f"copy it next to the model (expected at {path.parent / location})"
            )
    problems = signature_problems(model)
    if problems:
        raise ModelLoadError(f"{path}: " + "; ".join(problems))
    if check:
        try:
            # A path lets the checker handle models over 2 GiB with external data.
            onnx.checker.check_model(str(path) if locations else model)
        except onnx.checker.ValidationError as exc:
            raise ModelLoadError(f"{path}: invalid ONNX model: {first_line(exc)}") from None
    if locations and weights:
        onnx.load_external_data_for_model(model, str(path.parent))
    return model


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def needs_external_data(model: ModelProto) -> bool:
    """Whether the model is too big for one protobuf file."""
    return int(model.ByteSize()) > EXTERNAL_THRESHOLD


def save(model: ModelProto, path: Path) -> list[Path]:
    """Write a model; weights go to `<file>.data` when it would exceed protobuf's 2 GiB.

    Returns every file written (the model first).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not needs_external_data(model):
        path.write_bytes(model.SerializeToString())
        return [path]
    data_name = path.name + ".data"
    onnx.save_model(
        copy_model(model),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )
    return [path, path.parent / data_name]


def serialize(model: ModelProto) -> bytes:
    """Bytes of an in-memory model (for onnxruntime sessions); must fit in 2 GiB."""
    return bytes(model.SerializeToString())


def model_bytes(model: ModelProto) -> int:
    """Serialized size of the model in bytes."""
    return int(model.ByteSize())


def initializer_names(model: ModelProto) -> set[str]:
    """Names of every initializer of the main graph."""
    return {init.name for init in model.graph.initializer}


def graph_inputs(model: ModelProto) -> list[ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old exporters list both)."""
    inits = initializer_names(model)
    return [vi for vi in model.graph.input if vi.name not in inits]


def tensor_info(value: ValueInfoProto) -> TensorInfo:
    """A ValueInfoProto as a TensorInfo; unknown or symbolic dimensions become -1.

    Raises:
        ModelLoadError: an element type outside the API's dtypes, or a non-tensor value.
    """
    if not value.type.HasField("tensor_type"):
        raise ModelLoadError(f"tensor {value.name!r} is not a plain tensor (sequence/map/optional)")
    tensor_type = value.type.tensor_type
    dtype = DTYPE_BY_ONNX.get(tensor_type.elem_type)
    if dtype is None:
        name = TensorProto.DataType.Name(tensor_type.elem_type)
        raise ModelLoadError(f"tensor {value.name!r} has unsupported element type {name}")
    shape = [
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1
        for dim in tensor_type.shape.dim
    ]
    return TensorInfo(name=value.name, dtype=dtype, shape=shape)


def tensor_infos(values: Sequence[ValueInfoProto]) -> list[TensorInfo]:
    """TensorInfo of every value, in order."""
    return [tensor_info(v) for v in values]


def model_inputs(model: ModelProto) -> list[TensorInfo]:
    """The model's real inputs as TensorInfo."""
    return tensor_infos(graph_inputs(model))


def fixed_batch(model: ModelProto) -> int | None:
    """The first fixed leading (batch) dimension among the real inputs; None if all are dynamic."""
    return next((t.shape[0] for t in model_inputs(model) if t.shape and t.shape[0] > 0), None)


def model_outputs(model: ModelProto) -> list[TensorInfo]:
    """The model's outputs as TensorInfo."""
    return tensor_infos(list(model.graph.output))


def numpy_dtype(dtype: DType) -> type[np.generic]:
    """The numpy scalar type of an API dtype."""
    return NUMPY_BY_DTYPE[dtype]


def copy_model(model: ModelProto) -> ModelProto:
    """A deep copy (passes never mutate their input)."""
    out = ModelProto()
    out.CopyFrom(model)
    return out
