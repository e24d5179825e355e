"""INT8 passes with onnxruntime's quantization tools: dynamic, and static QDQ with calibration.

The tools work on files, so each pass round-trips through a private temporary directory;
the pass itself is still ModelProto in, ModelProto out.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
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
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs benign per-tensor notes on the root logger; keep Job logs readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _counts(before: ModelProto, after: ModelProto) -> dict[str, object]:
    ops_before, ops_after = op_counts(before), op_counts(after)
    return {
        "opsBefore": ops_before,
        "integerOps": {op: ops_after[op] for op in _INT_OPS if op in ops_after},
    }


def quantize_dynamic_int8(model: ModelProto, config: DynamicQuantConfig) -> StageOutput:
    """Dynamic INT8 of the configured op types (MatMul/Gemm by default: ConvInteger is slow)."""
    with tempfile.TemporaryDirectory(prefix="kubeaccel-dq-") as tmp, _quiet_root_logger():
        src, pre, out = Path(tmp, "in.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "out.onnx")
        onnx_io.save(model, src)
        how = _pre_process(src, pre)
        try:
            quantize_dynamic(
                str(pre),
                str(out),
                op_types_to_quantize=list(config.op_types),
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
    with tempfile.TemporaryDirectory(prefix="kubeaccel-sq-") as tmp, _quiet_root_logger():
        src, pre, out = Path(tmp, "in.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "out.onnx")
        onnx_io.save(model, src)
        how = _pre_process(src, pre)
        try:
            quantize_static(
                str(pre),
                str(out),
                _Reader(samples, batch),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(config.op_types) if config.op_types else None,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                activation_type=activations,
                weight_type=QuantType.QInt8,
                calibrate_method=_ORT_METHOD[config.method],
                use_external_data_format=onnx_io.needs_external_data(model),
                extra_options=extra,
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
        **_counts(model, result),
    }
    return StageOutput(result, notes)
