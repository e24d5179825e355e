"""FP16 pass: float weights and compute in half precision, overflow-prone ops kept FP32."""

from __future__ import annotations

from onnx import ModelProto, TensorProto
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from kubeaccel_runtime.onnx_io import copy_model
from kubeaccel_runtime.optimize.config import Fp16Config, StageOutput
from kubeaccel_runtime.optimize.errors import UnsupportedModel
from kubeaccel_runtime.optimize.graph import op_counts


def convert_fp16(model: ModelProto, config: Fp16Config) -> StageOutput:
    """Convert to FP16 (inputs/outputs stay FP32 when keep_io_types); NaN/Inf are caught by
    the accuracy gate, which rejects any output that is not finite."""
    block = sorted({*DEFAULT_OP_BLOCK_LIST, *config.op_block_list})
    try:
        result = convert_float_to_float16(
            copy_model(model),
            keep_io_types=config.keep_io_types,
            op_block_list=block,
            disable_shape_infer=False,
        )
    except Exception as exc:  # the converter raises assorted types on odd graphs
        raise UnsupportedModel(f"FP16 conversion failed: {exc}") from None
    kept = sorted({n.op_type for n in model.graph.node} & set(config.op_block_list))
    halves = sum(1 for i in result.graph.initializer if i.data_type == TensorProto.FLOAT16)
    notes: dict[str, object] = {
        "keepIoTypes": config.keep_io_types,
        "blockedOpsPresent": kept,
        "fp16Initializers": halves,
        "casts": op_counts(result).get("Cast", 0),
    }
    return StageOutput(result, notes)
