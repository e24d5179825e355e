"""Export a trained example model to a self-contained ONNX file with a dynamic batch.

The TorchScript-based exporter (`dynamo=False`) is used on purpose: it writes Conv / Gemm /
MatMul with their weights as initializers and full shape information, which onnxruntime's
quantizers take as is (a dynamo export must first go through `quant_pre_process`), and its
output bytes are reproducible for the same weights.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
PRODUCER = "kubeaccel-zoo"


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    metadata: dict[str, str] | None = None,
    opset: int = OPSET,
    input_name: str = INPUT_NAME,
    output_names: tuple[str, ...] = (OUTPUT_NAME,),
) -> onnx.ModelProto:
    """The model as ONNX: one input, the named outputs, batch dimension dynamic everywhere."""
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation; the choice is deliberate.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # the legacy exporter accepts file objects
            dynamo=False,
            external_data=False,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes={name: {0: BATCH_DIM} for name in (input_name, *output_names)},
            opset_version=opset,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = PRODUCER
    proto.producer_version = torch.__version__
    del proto.metadata_props[:]
    for key, value in sorted((metadata or {}).items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def serialize(proto: onnx.ModelProto) -> bytes:
    """Deterministic bytes of a model (protobuf fields in a fixed order)."""
    data: bytes = proto.SerializeToString(deterministic=True)
    return data
