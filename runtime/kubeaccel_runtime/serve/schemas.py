"""Open Inference Protocol v2 request and response bodies as pydantic models.

Requests are parsed with orjson, then validated against `InferenceRequest`; the tensor
`data` stays untyped here (`Any`) so numpy converts it in C instead of pydantic walking
every element. The same models produce the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# OIP parameters: a flat object of bool / number / string values.
ParamValue = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, ParamValue]
Dim = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
TensorName = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class OipModel(BaseModel):
    """Base: fields as named on the wire; unknown top-level fields are ignored, like peers do."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class RequestInput(OipModel):
    """One input tensor of an infer request."""

    name: TensorName = Field(description="Input tensor name.")
    shape: list[Dim] = Field(max_length=16, description="Tensor shape.")
    datatype: StrictStr = Field(max_length=16, description="OIP datatype, e.g. FP32 or INT64.")
    parameters: Parameters | None = Field(
        default=None, description="binary_data_size: byte length of this tensor's binary data."
    )
    data: Any = Field(
        default=None, description="Row-major tensor contents (flat or nested); absent if binary."
    )


class RequestOutput(OipModel):
    """One requested output tensor."""

    name: TensorName = Field(description="Output tensor name.")
    parameters: Parameters | None = Field(
        default=None, description="binary_data: return this output as binary data."
    )


class InferenceRequest(OipModel):
    """Body (or JSON header, with the binary extension) of POST .../infer."""

    id: StrictStr | None = Field(default=None, max_length=256, description="Echoed request id.")
    parameters: Parameters | None = Field(
        default=None, description="binary_data_output: return every output as binary data."
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=64, description="Input tensors.")
    outputs: list[RequestOutput] | None = Field(
        default=None, max_length=64, description="Outputs to return; absent returns all."
    )


class ResponseOutput(OipModel):
    """One output tensor of an infer response."""

    name: str = Field(description="Output tensor name.")
    shape: list[int] = Field(description="Tensor shape.")
    datatype: str = Field(description="OIP datatype.")
    parameters: Parameters | None = Field(
        default=None, description="binary_data_size when the data follows the JSON header."
    )
    data: list[Any] | None = Field(default=None, description="Flat row-major contents.")


class InferenceResponse(OipModel):
    """Body (or JSON header) of a successful infer response."""

    model_name: str = Field(description="Model name.")
    model_version: str | None = Field(default=None, description="Model version.")
    id: str | None = Field(default=None, description="The request id, if one was sent.")
    parameters: Parameters | None = Field(default=None, description="Response parameters.")
    outputs: list[ResponseOutput] = Field(description="Output tensors.")


class TensorMetadata(OipModel):
    """Name, datatype and shape (-1 = dynamic) of a model input or output."""

    name: str = Field(description="Tensor name.")
    datatype: str = Field(description="OIP datatype.")
    shape: list[int] = Field(description="Shape; -1 marks a dynamic dimension.")


class ModelMetadata(OipModel):
    """GET /v2/models/{name}."""

    name: str = Field(description="Model name.")
    versions: list[str] = Field(description="Available versions (the artifact id).")
    platform: str = Field(description="Backend, always onnxruntime_onnx.")
    inputs: list[TensorMetadata] = Field(description="Inputs this server accepts.")
    outputs: list[TensorMetadata] = Field(description="Outputs this server returns.")


class ServerMetadata(OipModel):
    """GET /v2."""

    name: str = Field(description="Server name.")
    version: str = Field(description="Server version.")
    extensions: list[str] = Field(description="Supported protocol extensions.")


class HealthResponse(OipModel):
    """Liveness/readiness answer; `error` says why when not ready."""

    live: bool | None = Field(default=None, description="Liveness result.")
    ready: bool | None = Field(default=None, description="Readiness result.")
    error: str | None = Field(default=None, description="Why the server or model is not ready.")


class ErrorResponse(OipModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="What was wrong and what was expected.")
