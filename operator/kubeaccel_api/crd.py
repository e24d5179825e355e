"""Pure: pydantic models -> apiextensions.k8s.io/v1 CustomResourceDefinition dict.

The JSON schema pydantic emits is not a Kubernetes *structural* schema; this converter
inlines `$ref`/`$defs`, turns `anyOf [X, null]` into `nullable: true`, `const` into a
one-value enum, numeric `exclusiveMinimum`/`exclusiveMaximum` into a bound plus a
boolean, drops titles and `additionalProperties: false`, and marks free-form objects
with `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

from typing import Any

from kubeaccel_api.constants import (
    CATEGORIES,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec, AcceleratedModelStatus

Schema = dict[str, Any]

# Keys that survive conversion (everything else pydantic emits is dropped).
_KEEP = {
    "type",
    "format",
    "description",
    "enum",
    "default",
    "items",
    "properties",
    "required",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "additionalProperties",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
}


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Replace a `$ref` (and pydantic's allOf-wrapped ref) by the referenced schema."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
        return _resolve(merged, defs)
    return node


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = _resolve(node, defs)
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express union in a structural schema: {node['anyOf']}")
        # An Optional field is simply omitted when None (exclude_none); nullable keeps
        # an explicit `null` from a client valid too.
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        inner = _convert({**_resolve(variants[0], defs), **rest}, defs)
        inner["nullable"] = True
        if inner.get("default", 0) is None:
            del inner["default"]
        return inner
    out: Schema = {}
    if "const" in node:
        out["enum"] = [node["const"]]
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out[key] = _convert(value, defs)
            elif value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("format") == "date-time":
        out["type"] = "string"
    if out.get("type") == "object" and "additionalProperties" in out and "properties" in out:
        del out["additionalProperties"]
    return out


def model_schema(model: type[Any]) -> Schema:
    """Structural OpenAPI v3 schema of a pydantic model, with camelCase property names."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _printer_columns() -> list[Schema]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Speedup",
            "type": "number",
            "jsonPath": ".status.optimization.speedup",
            "description": "Latency before / after optimization",
        },
        {
            "name": "Size",
            "type": "number",
            "jsonPath": ".status.optimization.sizeRatio",
            "description": "Optimized size / original size",
        },
        {
            "name": "Shards",
            "type": "string",
            "jsonPath": ".status.readyShards",
            "description": "Ready / total shards",
        },
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "priority": 1,
        },
        {
            "name": "Rollout",
            "type": "string",
            "jsonPath": ".status.rollout.phase",
            "priority": 1,
        },
        {
            "name": "Artifact",
            "type": "string",
            "jsonPath": ".status.deployedArtifactId",
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def build_crd() -> Schema:
    """The AcceleratedModel CustomResourceDefinition."""
    spec = model_schema(AcceleratedModelSpec)
    status = model_schema(AcceleratedModelStatus)
    # Status is written by the operator only; a fresh object has none.
    status.pop("required", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "AcceleratedModel: a model kubeaccel optimizes, "
                            "checks for accuracy and serves as GPU-scheduled shards.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }
