"""Element types: the API's DType, OIP v2 datatype names, numpy dtypes, ONNX type strings."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from kubeaccel_api.v1alpha1 import DType

from kubeaccel_runtime.client import oip_datatype

NUMPY: Final[dict[DType, np.dtype[Any]]] = {d: np.dtype(d.value) for d in DType}

# The OIP v2 names come from the client's table, the one the wire format is decoded with.
OIP_NAME: Final[dict[DType, str]] = {d: oip_datatype(NUMPY[d]) for d in DType}
FROM_OIP: Final[dict[str, DType]] = {v: k for k, v in OIP_NAME.items()}

# onnxruntime's NodeArg.type strings.
FROM_ORT: Final[dict[str, DType]] = {
    "tensor(float)": DType.FLOAT32,
    "tensor(float16)": DType.FLOAT16,
    "tensor(double)": DType.FLOAT64,
    "tensor(int8)": DType.INT8,
    "tensor(uint8)": DType.UINT8,
    "tensor(int16)": DType.INT16,
    "tensor(int32)": DType.INT32,
    "tensor(int64)": DType.INT64,
    "tensor(bool)": DType.BOOL,
}


def is_float(dtype: DType) -> bool:
    """Whether elements of `dtype` can be NaN or Inf."""
    return dtype in (DType.FLOAT16, DType.FLOAT32, DType.FLOAT64)


def is_int(dtype: DType) -> bool:
    """Whether `dtype` is a (signed or unsigned) integer type."""
    return dtype in (DType.INT8, DType.UINT8, DType.INT16, DType.INT32, DType.INT64)
