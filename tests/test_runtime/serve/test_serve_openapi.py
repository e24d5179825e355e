"""The OpenAPI document a server publishes describes its model's real request contract."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema_rs
import pytest
from kubeaccel_api.routing import REPORT_PATH
from kubeaccel_api.v1alpha1 import DType
from kubeaccel_runtime.serve.app import ModelSlot, ServeApp, ServeSettings
from kubeaccel_runtime.serve.contract import Contract, TensorRule
from kubeaccel_runtime.serve.openapi import build_openapi
from kubeaccel_runtime.serve.request_schema import BATCH_ALTERNATIVES, request_schema
from kubeaccel_runtime.serve.routing import RoutingSource
from kubeaccel_runtime.serve.session import LoadedModel

X = TensorRule("x", DType.FLOAT32, (-1, 4))
Y = TensorRule("y", DType.FLOAT32, (-1, 2))


def contract(*inputs: TensorRule, max_batch: int = 4) -> Contract:
    """A contract of `inputs`, one output y and a small batch limit."""
    return Contract(inputs=inputs, outputs=(Y,), max_request_bytes=4096, max_batch=max_batch)


def validator(schema: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator (the dialect of OpenAPI 3.1)."""
    return jsonschema_rs.Draft202012Validator(schema)


def request(batch: int = 2, **changes: Any) -> dict[str, Any]:
    """A valid request for the two-input test model, with top-level `changes`."""
    doc = {
        "id": "r1",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [batch, 4], "data": [0.5] * 4 * batch},
            {"name": "k", "datatype": "INT64", "shape": [batch, 1], "data": [3] * batch},
            {"name": "mask", "datatype": "BOOL", "shape": [batch, 4], "data": [True] * 4 * batch},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }
    return {**doc, **changes}


def test_the_served_document_names_only_the_model_and_its_version(
    two_input_model: LoadedModel,
) -> None:
    doc = build_openapi(two_input_model)
    params = doc["paths"]["/v2/models/{model_name}/versions/{model_version}/infer"]["post"][
        "parameters"
    ]
    assert {p["name"]: p["schema"]["enum"] for p in params} == {
        "model_name": ["two"],
        "model_version": [two_input_model.version],
    }
    generic = build_openapi()["paths"]["/v2/models/{model_name}"]["get"]["parameters"]
    assert generic == [
        {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
    ]


def test_valid_requests_of_every_batch_size_match_the_schema(two_input_model: LoadedModel) -> None:
    schema = build_openapi(two_input_model)["components"]["schemas"]["InferenceRequest"]
    check = validator(schema)
    for batch in range(1, 9):  # the fixture's limits.maxBatch is 8
        assert check.is_valid(request(batch)), batch
    assert check.is_valid(request(outputs=None, parameters={"binary_data_output": True}))
    assert schema["x-max-batch"] == 8
    assert "x FP32[-1, 4], k INT64[-1, 1], mask BOOL[-1, 4]" in schema["description"]


def _set(doc: dict[str, Any], index: int, key: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["inputs"][index][key] = value
    return doc


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        ("batch above maxBatch", request(9)),
        ("an unknown input name", _set(request(), 0, "name", "z")),
        ("a wrong datatype", _set(request(), 0, "datatype", "FP64")),
        ("a wrong rank", _set(request(), 0, "shape", [8])),
        ("a fixed dimension changed", _set(request(), 0, "shape", [4, 2])),
        ("too few elements", _set(request(), 0, "data", [0.5] * 7)),
        ("inputs disagreeing on the batch", _set(request(), 1, "shape", [1, 1])),
        ("an INT64 above its range", _set(request(), 1, "data", [3, 11])),
        ("a fraction for INT64", _set(request(), 1, "data", [3, 1.5])),
        ("a number for BOOL", _set(request(), 2, "data", [1] * 8)),
        ("a boolean for FP32", _set(request(), 0, "data", [True] * 8)),
        (
            "binary_data_size in a JSON body",
            _set(request(), 0, "parameters", {"binary_data_size": 32}),
        ),
        ("a missing input", request(inputs=request()["inputs"][:2])),
        ("an unknown output", request(outputs=[{"name": "zz"}])),
        ("classification", request(outputs=[{"name": "y", "parameters": {"classification": 2}}])),
        ("binary_data_output not a boolean", request(parameters={"binary_data_output": 1})),
        ("a long id", request(id="i" * 257)),
    ],
)
def test_requests_the_server_refuses_do_not_match_the_schema(
    two_input_model: LoadedModel, name: str, doc: dict[str, Any]
) -> None:
    schema = build_openapi(two_input_model)["components"]["schemas"]["InferenceRequest"]
    assert not validator(schema).is_valid(doc), name


def test_value_bounds_follow_the_datatype_and_the_declared_range() -> None:
    rules = (
        TensorRule("a", DType.INT8, (-1, 1), min=-1000, max=4.5),
        TensorRule("b", DType.FLOAT16, (-1, 1)),
        TensorRule("c", DType.FLOAT32, (-1, 1), min=0.0),
        TensorRule("d", DType.FLOAT64, (-1, 1)),
        TensorRule("e", DType.UINT8, (-1, 1), min=0.5),
    )
    schema = request_schema(contract(*rules, max_batch=1), (Y,))
    items = [
        i["properties"]["data"]["items"] for i in schema["properties"]["inputs"]["prefixItems"]
    ]
    assert items == [
        {"type": "integer", "minimum": -128, "maximum": 4},
        {"type": "number", "minimum": -65504.0, "maximum": 65504.0},
        {"type": "number", "minimum": 0.0, "maximum": 3.4028234663852886e38},
        {"type": "number"},
        {"type": "integer", "minimum": 1, "maximum": 255},
    ]


def test_batch_sizes_are_enumerated_up_to_a_bound_and_the_limit_is_stated() -> None:
    schema = request_schema(contract(X, max_batch=1000), (Y,))
    alternatives = schema["properties"]["inputs"]["anyOf"]
    assert len(alternatives) == BATCH_ALTERNATIVES
    shapes = [a["prefixItems"][0]["properties"]["shape"]["const"] for a in alternatives]
    assert shapes[0] == [1, 4] and shapes[-1] == [BATCH_ALTERNATIVES, 4]
    assert schema["x-max-batch"] == 1000 and "maxBatch 1000" in schema["description"]


def test_inputs_without_a_batch_dimension_have_one_fixed_shape() -> None:
    fixed = TensorRule("f", DType.FLOAT32, (2, 3))
    inputs = request_schema(contract(fixed), (Y,))["properties"]["inputs"]
    assert "anyOf" not in inputs
    data = inputs["prefixItems"][0]["properties"]
    assert data["shape"] == {"const": [2, 3]}
    assert data["data"]["minItems"] == data["data"]["maxItems"] == 6


def test_a_dynamic_inner_dimension_fixes_the_rank_but_not_the_length() -> None:
    seq = TensorRule("s", DType.INT64, (-1, -1))
    check = validator(request_schema(contract(seq, max_batch=2), (Y,)))
    ok = {"inputs": [{"name": "s", "datatype": "INT64", "shape": [2, 7], "data": [1] * 14}]}
    assert check.is_valid(ok)
    wrong_rank = copy.deepcopy(ok)
    wrong_rank["inputs"][0]["shape"] = [2, 7, 1]
    assert not check.is_valid(wrong_rank)


async def test_the_server_serves_the_generic_document_until_the_model_loads(
    two_input_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    slot = ModelSlot("two")
    app = app_factory(slot)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/openapi.json")).json() == build_openapi(routes=False)
        slot.set(two_input_model)
        doc = (await client.get("/openapi.json")).json()
        assert doc == build_openapi(two_input_model, routes=False)


async def test_only_a_routing_server_documents_the_rollout_report(
    two_input_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> None:
    """Shard 0 of a chain answers /v2/rollout; any other server would only ever say 404."""
    routing = ServeSettings(routing=RoutingSource(chain="a"))
    for settings, documented in ((None, False), (routing, True)):
        app = app_factory(two_input_model, settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            doc = (await client.get("/openapi.json")).json()
            answer = await client.get(REPORT_PATH)
        assert (REPORT_PATH in doc["paths"]) is documented
        assert (answer.status_code == 200) is documented


def test_the_binary_extension_is_described_not_listed_as_a_request_media_type() -> None:
    body = build_openapi()["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]
    assert list(body["content"]) == ["application/json"]
    assert body["x-binary-tensor-data"]["header"] == "Inference-Header-Content-Length"
    assert "Inference-Header-Content-Length" in body["description"]
