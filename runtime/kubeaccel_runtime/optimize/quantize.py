"""INT8 passes with onnxruntime's quantization tools: dynamic, and static QDQ with calibration.

The tools work on files, so each pass round-trips through a private temporary directory;
the pass itself is still ModelProto in, ModelProto out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from kubeaccel_api.v1alpha1 import CalibrationMethod
from onnx import ModelProto
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization import CalibrationMethod as OrtCalibrationMethod
from onnxruntime.quantization.onnx_model import ONNXModel
from onnxruntime.quantization.shape_inference import quant_pre_process

from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.optimize.config import DynamicQuantConfig, StageOutput, StaticQuantConfig
from kubeaccel_runtime.optimize.data import Feeds, SampleReader
from kubeaccel_runtime.optimize.errors import UnsupportedModel
from kubeaccel_runtime.optimize.graph import op_counts

_ORT_METHOD = {
    CalibrationMethod.MINMAX: OrtCalibrationMethod.MinMax,
    CalibrationMethod.ENTROPY: OrtCalibrationMethod.Entropy,
    CalibrationMethod.PERCENTILE: OrtCalibrationMethod.Percentile,
}
_INT_OPS = (
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
    "QLinearConv", "QGemm",
)  # fmt: skip
CALIBRATION_BATCH = 16
PREPARED_CACHE = 4
_PREPARED: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
NO_NODE = "\x00none"  # a node name no graph has


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    """Adapts our SampleReader protocol to onnxruntime's get_next() reader."""

    def __init__(self, reader: SampleReader, batch: int) -> None:
        self._reader = reader
        self._batch = batch
        self._it: Iterator[Feeds] = reader.batches(batch)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._reader.batches(self._batch)


def _prepare(model: ModelProto, folder: Path) -> tuple[Path, str]:
    """The pre-processed model written into `folder`, and how it was pre-processed.

    Results are kept for the last few models (by content digest): the mixed-precision search
    quantizes one model many times, and pre-processing is the slow part of a small model.
    Node names in the result are the ones nodes_to_exclude/nodes_to_quantize must use.
    """
    src, pre = folder / "in.onnx", folder / "pre.onnx"
    if onnx_io.needs_external_data(model):
        onnx_io.save(model, src)
        return pre, _pre_process(src, pre)
    blob = onnx_io.serialize(model)
    key = hashlib.sha256(blob).hexdigest()
    hit = _PREPARED.get(key)
    if hit is not None:
        _PREPARED.move_to_end(key)
        pre.write_bytes(hit[0])
        return pre, hit[1]
    src.write_bytes(blob)
    how = _pre_process(src, pre)
    _PREPARED[key] = (pre.read_bytes(), how)
    while len(_PREPARED) > PREPARED_CACHE:
        _PREPARED.popitem(last=False)
    return pre, how


def pre_processed(model: ModelProto, *, dynamic: bool = False) -> ModelProto:
    """The model as the INT8 quantizers see it: the names nodes_to_exclude must use.

    Pre-processing fuses a 2-D MatMul+Add into a Gemm, and the dynamic quantizer then splits
    every Gemm into MatMul+Add under new names; this applies the same onnxruntime steps.
    """
    with tempfile.TemporaryDirectory(prefix="kubeaccel-pre-") as tmp, quiet_quantizers():
        pre, _ = _prepare(model, Path(tmp))
        seen = onnx_io.load(pre, check=False)
    if dynamic:
        view = ONNXModel(seen)
        view.replace_gemm_with_matmul()
        seen = view.model
    return seen


def _pre_process(src: Path, dst: Path) -> str:
    """Shape inference + light optimization the quantizer needs (symbolic inference first)."""
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return "symbolic+onnx shape inference"
    except Exception as first:  # the symbolic inferencer raises bare Exceptions on some ops
        logging.getLogger(__name__).debug("symbolic shape inference failed: %s", first)
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return "onnx shape inference (symbolic inference failed)"
    except Exception as exc:  # same: onnxruntime gives no narrower type here
        raise UnsupportedModel(f"quantization pre-processing failed: {exc}") from None


@contextlib.contextmanager
def quiet_quantizers() -> Iterator[None]:
    """Keep Job logs readable: the quantizers log benign per-node notes on the root logger,
    and importing the 4-bit one even calls logging.basicConfig(INFO); undo both after."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def _counts(before: ModelProto, after: ModelProto) -> dict[str, object]:
    ops_before, ops_after = op_counts(before), op_counts(after)
    return {
        "opsBefore": ops_before,
        "integerOps": {op: ops_after[op] for op in _INT_OPS if op in ops_after},
    }


def quantize_dynamic_int8(model: ModelProto, config: DynamicQuantConfig) -> StageOutput:
    """Dynamic INT8 of the configured op types (MatMul/Gemm by default: ConvInteger is slow)."""
    with tempfile.TemporaryDirectory(prefix="kubeaccel-dq-") as tmp, quiet_quantizers():
        out = Path(tmp, "out.onnx")
        pre, how = _prepare(model, Path(tmp))
        try:
            quantize_dynamic(
                str(pre),
                str(out),
                op_types_to_quantize=list(config.op_types),
                nodes_to_exclude=list(config.nodes_to_exclude),
                nodes_to_quantize=_only(config.nodes_to_quantize),
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                weight_type=QuantType.QInt8,
                use_external_data_format=onnx_io.needs_external_data(model),
            )
        except Exception as exc:  # the quantizer raises assorted exception types
            raise UnsupportedModel(f"dynamic quantization failed: {exc}") from None
        result = onnx_io.load(out)
    notes: dict[str, object] = {
        "opTypes": list(config.op_types),
        "perChannel": config.per_channel,
        "reduceRange": config.reduce_range,
        "preProcess": how,
        **_excluded(config.nodes_to_exclude),
        **_counts(model, result),
    }
    return StageOutput(result, notes)


def quantize_static_int8(model: ModelProto, config: StaticQuantConfig) -> StageOutput:
    """Static INT8 QDQ (u8 or symmetric s8 activations, s8 weights) calibrated on samples."""
    fixed = onnx_io.fixed_batch(model)
    batch = fixed if fixed is not None else CALIBRATION_BATCH
    samples = config.calibration
    if fixed is not None and fixed != 1 and samples.count % fixed:
        samples = samples.take(samples.count - samples.count % fixed)
    extra: dict[str, object] = {}
    if config.method is CalibrationMethod.PERCENTILE:
        extra["CalibPercentile"] = 99.99
    if config.symmetric:
        extra.update(ActivationSymmetric=True, WeightSymmetric=True)
    activations = QuantType.QInt8 if config.symmetric else QuantType.QUInt8
    with tempfile.TemporaryDirectory(prefix="kubeaccel-sq-") as tmp, quiet_quantizers():
        out = Path(tmp, "out.onnx")
        pre, how = _prepare(model, Path(tmp))
        try:
            quantize_static(
                str(pre),
                str(out),
                _Reader(samples, batch),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(config.op_types) if config.op_types else None,
                nodes_to_exclude=list(config.nodes_to_exclude),
                nodes_to_quantize=_only(config.nodes_to_quantize),
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                activation_type=activations,
                weight_type=QuantType.QInt8,
                calibrate_method=_ORT_METHOD[config.method],
                use_external_data_format=onnx_io.needs_external_data(model),
                extra_options=extra,
                calibration_cache_path=config.calibration_cache,
            )
        except Exception as exc:  # calibration and quantization raise assorted types
            raise UnsupportedModel(f"static quantization failed: {exc}") from None
        result = onnx_io.load(out)
    notes: dict[str, object] = {
        "format": "QDQ",
        "activations": "int8 symmetric" if config.symmetric else "uint8",
        "weights": "int8",
        "perChannel": config.per_channel,
        "reduceRange": config.reduce_range,
        "calibration": {
            "method": config.method.value,
            "samples": samples.count,
            "origin": samples.origin,
            "batch": batch,
        },
        "preProcess": how,
        **_excluded(config.nodes_to_exclude),
        **_counts(model, result),
    }
    return StageOutput(result, notes)


def _only(nodes: tuple[str, ...] | None) -> list[str] | None:
    # onnxruntime reads an empty list as "no restriction": keep "none" expressible.
    if nodes is None:
        return None
    return list(nodes) or [NO_NODE]


def _excluded(nodes: tuple[str, ...]) -> dict[str, object]:
    return {"keptFp32": list(nodes)} if nodes else {}
