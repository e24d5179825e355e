"""The OpenAPI 3.1 document of the runtime API, generated from the pydantic schemas.

Without a model it is the generic OIP v2 document; `python -m kubeaccel_runtime.serve.openapi
--write docs/openapi-runtime.json` regenerates the committed copy and a test fails when it is
stale. A server with a loaded model serves it specialized to that model: the model name and
version as the only path values, and the infer request schema of its contract
(serve.request_schema), so that schema-driven clients and fuzzers send valid requests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeaccel_api import __version__
from kubeaccel_api.routing import REPORT_PATH, RoutingReport
from pydantic.json_schema import models_json_schema

from kubeaccel_runtime.serve.request_schema import request_schema
from kubeaccel_runtime.serve.schemas import (
    ErrorResponse,
    HealthResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
)

if TYPE_CHECKING:
    from kubeaccel_runtime.serve.session import LoadedModel

_REF = "#/components/schemas/{model}"
_MODELS = (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    HealthResponse,
    ErrorResponse,
    RoutingReport,
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid request: the message names the input and what was expected.",
        404: "Unknown model or version.",
        405: "Wrong HTTP method.",
        413: "Body larger than limits.maxRequestBytes.",
        415: "Compressed bodies are not accepted.",
        422: "An output held NaN/Inf and its contract rejects them.",
        500: "The model broke its own output contract, or onnxruntime failed.",
        502: "The next shard answered with an error.",
        503: "Not ready (loading, failed, shutting down, overloaded, next shard down).",
    }
    return {str(c): _json("ErrorResponse", text[c]) for c in codes}


def _path_param(name: str, value: str | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if value is not None:
        schema["enum"] = [value]
    return {"name": name, "in": "path", "required": True, "schema": schema}


# The binary tensor data extension is described, not listed as a request media type: JSON
# Schema cannot describe its layout, so a schema-driven client would send arbitrary bytes
# as "valid". Nor is its header a parameter: with a JSON body it would make the server read
# that body as a binary request.
_BINARY_EXTENSION = {
    "mediaType": "application/octet-stream",
    "header": "Inference-Header-Content-Length",
    "description": (
        "Binary tensor data extension: send the header Inference-Header-Content-Length "
        "(an integer >= 1); the first that many bytes of the body are an InferenceRequest "
        "JSON, and the raw little-endian tensors follow in input order, each announced by "
        "parameters.binary_data_size instead of data."
    ),
}


def _model_paths(prefix: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    infer = {
        "post": {
            "summary": "Run inference (JSON tensors or the binary tensor data extension).",
            "operationId": "infer" + ("_version" if "versions" in prefix else ""),
            "parameters": params,
            "requestBody": {
                "description": (
                    "An InferenceRequest as JSON, or a binary request: "
                    + _BINARY_EXTENSION["description"]
                ),
                "required": True,
                "content": {"application/json": {"schema": _ref("InferenceRequest")}},
                "x-binary-tensor-data": _BINARY_EXTENSION,
            },
            "responses": {
                "200": {
                    "description": "Outputs; binary outputs follow the JSON header.",
                    "content": {
                        "application/json": {"schema": _ref("InferenceResponse")},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                **_errors(400, 404, 405, 413, 415, 422, 500, 502, 503),
            },
        }
    }
    suffix = "_version" if "versions" in prefix else ""
    return {
        prefix: {
            "get": {
                "summary": "Model metadata: inputs and outputs with datatypes and shapes.",
                "operationId": "model_metadata" + suffix,
                "parameters": params,
                "responses": {
                    "200": _json("ModelMetadata", "Model metadata."),
                    **_errors(404, 503),
                },
            }
        },
        prefix + "/ready": {
            "get": {
                "summary": "Model readiness (including the next shard's, when chained).",
                "operationId": "model_ready" + suffix,
                "parameters": params,
                "responses": {
                    "200": _json("HealthResponse", "Ready."),
                    **_errors(404),
                    "503": _json("HealthResponse", "Not ready; `error` says why."),
                },
            }
        },
        prefix + "/infer": infer,
    }


def build_openapi(model: LoadedModel | None = None, *, routes: bool = True) -> dict[str, Any]:
    """The whole OpenAPI document, generic or for `model` (deterministic: same input, same bytes).

    `routes=False` (a shard that is not shard 0) leaves out the rollout report, which such a
    server never serves: a client of that server's document then finds only what it answers.
    """
    _, generated = models_json_schema(
        [(m, "validation" if m is InferenceRequest else "serialization") for m in _MODELS],
        ref_template=_REF,
    )
    schemas = generated.get("$defs", {})
    name_param = _path_param("model_name", model.name if model else None)
    version_param = _path_param("model_version", model.version if model else None)
    if model is not None:
        schemas["InferenceRequest"] = request_schema(model.contract, model.final_outputs)
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "Server metadata.",
                "operationId": "server_metadata",
                "responses": {"200": _json("ServerMetadata", "Name, version, extensions.")},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "Liveness: the process answers.",
                "operationId": "live",
                "responses": {"200": _json("HealthResponse", "Live.")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness: model loaded, not shutting down, next shard ready.",
                "operationId": "ready",
                "responses": {
                    "200": _json("HealthResponse", "Ready."),
                    "503": _json("HealthResponse", "Not ready; `error` says why."),
                },
            }
        },
        **_model_paths("/v2/models/{model_name}", [name_param]),
        **_model_paths(
            "/v2/models/{model_name}/versions/{model_version}", [name_param, version_param]
        ),
        REPORT_PATH: {
            "get": {
                "summary": "Shadow/canary routing of shard 0 and what it measured (kubeaccel).",
                "description": (
                    "A kubeaccel extension the operator reads during a rollout: the routing in "
                    "force and counters since it was applied (mirrored and compared requests, "
                    "output differences, per-chain requests, errors and latency histogram)."
                ),
                "operationId": "rollout_report",
                "responses": {
                    "200": _json("RoutingReport", "Routing in force and its counters."),
                    "404": _json("ErrorResponse", "Not shard 0: this server never routes."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    if not routes:
        del paths[REPORT_PATH]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kubeaccel runtime (Open Inference Protocol v2)",
            "version": __version__,
            "description": (
                "Open Inference Protocol v2 (KServe v2 / Triton) HTTP API of one kubeaccel "
                "shard, with the binary tensor data extension. Every error is "
                '{"error": "..."}. A server with a loaded model serves this document at '
                "/openapi.json specialized to that model: its name and version, and its "
                "inputs' names, datatypes, shapes and value ranges in InferenceRequest."
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def render() -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build_openapi(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the document, or write it with `--write PATH`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--write":
        Path(args[1]).write_text(render())
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
