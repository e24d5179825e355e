"""4-bit weight-only quantization of MatMul weights (onnxruntime's MatMulNBits).

Each MatMul whose second input is a constant 2-D float matrix gets its weights packed into
4 bits per value, in blocks of `block_size` along the reduction axis with one FP32 scale per
block (symmetric, no zero point); activations stay FP32. On the CPU provider this is the
transformer/LLM format: weights shrink ~7x, and the kernel reads fewer bytes per token.
"""

from __future__ import annotations

import logging

from onnx import ModelProto, TensorProto

from kubeaccel_runtime.onnx_io import copy_model
from kubeaccel_runtime.optimize.config import Int4WeightConfig, StageOutput
from kubeaccel_runtime.optimize.errors import UnsupportedModel
from kubeaccel_runtime.optimize.graph import initializer_map, op_counts
from kubeaccel_runtime.optimize.quantize import quiet_quantizers

OP = "MatMulNBits"


def int4_nodes(model: ModelProto) -> list[str]:
    """Names of the MatMul nodes the 4-bit pass can quantize (constant 2-D float weights)."""
    inits = initializer_map(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is not None and weight.data_type == TensorProto.FLOAT and len(weight.dims) == 2:
            found.append(node.name)
    return found


def quantize_int4(model: ModelProto, config: Int4WeightConfig) -> StageOutput:
    """MatMul weights to 4-bit blocks; other nodes and the listed exclusions stay as they are.

    Raises:
        UnsupportedModel: the model has no MatMul with constant 2-D weights, or the quantizer
            fails on it.
    """
    every = int4_nodes(model)
    only = set(every) if config.nodes_to_quantize is None else set(config.nodes_to_quantize)
    eligible = [n for n in every if n in only and n not in config.nodes_to_exclude]
    if not every:
        raise UnsupportedModel("4-bit weight-only: no MatMul with constant 2-D float weights")
    skipped = [n for n in every if n not in eligible]
    with quiet_quantizers():
        # Imported here: the module configures logging at import (see quiet_quantizers).
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
        algo = DefaultWeightOnlyQuantConfig(
            block_size=config.block_size,
            is_symmetric=True,
            accuracy_level=config.accuracy_level or None,
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=("MatMul",),
            bits=4,
        )
        try:
            quantizer = MatMulNBitsQuantizer(
                copy_model(model),
                nodes_to_exclude=skipped,
                algo_config=algo,
            )
            quantizer.process()
        except Exception as exc:  # the quantizer raises assorted types on odd graphs
            raise UnsupportedModel(f"4-bit weight-only quantization failed: {exc}") from None
        result: ModelProto = quantizer.model.model
    notes: dict[str, object] = {
        "bits": 4,
        "blockSize": config.block_size,
        "symmetric": True,
        "accuracyLevel": config.accuracy_level,
        "quantizedMatMuls": op_counts(result).get(OP, 0),
        **({"keptFp32": list(config.nodes_to_exclude)} if config.nodes_to_exclude else {}),
    }
    return StageOutput(result, notes)
