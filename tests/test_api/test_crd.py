"""The generated CRD: current on disk, structural, and its CEL rules agree with the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from kubeaccel_api import crdgen
from kubeaccel_api.crd import build_crd
from kubeaccel_api.validation import InvalidResource, parse_resource

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))

# OpenAPI keys a structural schema may use (apiextensions.k8s.io/v1).
ALLOWED_KEYS = {
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
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def structural_problems(node: Any, path: str = "") -> list[str]:
    """Problems that make a schema non-structural (or invalid for apiextensions v1)."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{path}: schema must be a mapping"]
    for key in node:
        if key not in ALLOWED_KEYS:
            problems.append(f"{path}: key {key!r} is not allowed")
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in node and not preserve and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: every node needs a type")
    if "type" in node and node["type"] not in TYPES:
        problems.append(f"{path}: unknown type {node['type']!r}")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties: false is not allowed")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: arrays need items")
    for name in node.get("required", []):
        if name not in node.get("properties", {}):
            problems.append(f"{path}: required {name!r} is not a property")
    if "enum" in node and "default" in node and node["default"] not in node["enum"]:
        problems.append(f"{path}: default {node['default']!r} not in enum")
    for name, sub in node.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}{{}}")
    if node.get("type") != "string" and ("pattern" in node or "maxLength" in node):
        problems.append(f"{path}: string keywords on a non-string")
    for rule in node.get("x-kubernetes-validations", []):
        if set(rule) - {"rule", "message", "fieldPath", "reason", "messageExpression"}:
            problems.append(f"{path}: unknown validation keys {sorted(rule)}")
    return problems


def _missing_descriptions(node: dict[str, Any], path: str = "") -> list[str]:
    out = []
    for name, sub in node.get("properties", {}).items():
        if not sub.get("description"):
            out.append(f"{path}.{name}")
        out += _missing_descriptions(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _missing_descriptions(node["items"], f"{path}[]")
    return out


def _root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def cel_failures(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule on the object, as an API server would."""
    failures = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            failures.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                failures += cel_failures(sub, value[name], f"{path}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            failures += cel_failures(schema["items"], item, f"{path}[{i}]")
    return failures


def test_generated_files_on_disk_are_current() -> None:
    stale = [str(rel) for rel, text in crdgen.outputs().items() if (ROOT / rel).read_text() != text]
    assert not stale, f"{stale} are out of date: run `kubeaccel crd --write`"


def test_the_crd_file_parses_back_to_the_generated_object() -> None:
    assert yaml.safe_load((ROOT / crdgen.CRD_PATH).read_text()) == build_crd()


def test_the_crd_is_a_structural_apiextensions_v1_schema() -> None:
    crd = build_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert structural_problems(_root_schema()) == []


def test_the_structural_checker_catches_what_an_api_server_rejects() -> None:
    bad = {
        "type": "object",
        "properties": {"a": {"anyOf": [{"type": "string"}]}},
        "additionalProperties": False,
    }
    problems = structural_problems(bad)
    assert any("anyOf" in p for p in problems)
    assert any("needs a type" in p for p in problems)
    assert any("additionalProperties: false" in p for p in problems)


def test_every_spec_and_status_field_has_a_description() -> None:
    root = _root_schema()
    assert _missing_descriptions(root["properties"]["spec"], "spec") == []
    assert _missing_descriptions(root["properties"]["status"], "status") == []


def test_printer_columns_show_phase_speedup_size_shards_and_age() -> None:
    version = build_crd()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Phase", "Speedup", "Size", "Shards", "Age"]
    assert build_crd()["spec"]["names"]["shortNames"] == ["am"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_valid_examples_pass_every_cel_rule(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        parse_resource(doc)
        assert cel_failures(_root_schema(), doc) == []


def _rule_cases() -> list[Path]:
    """Invalid examples whose problem is a cross-field rule (written as CEL too)."""
    out = []
    for path in INVALID:
        try:
            parse_resource(yaml.safe_load(path.read_text()))
        except InvalidResource as exc:
            expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
            is_rule = not any(
                w in expected
                for w in (
                    "Input should",
                    "String should",
                    "List should",
                    "unknown field",
                    "apiVersion",
                    "metadata.",
                )
            )
            is_rule = is_rule and not expected.endswith(": is required")
            if is_rule and exc.problems:
                out.append(path)
    return out


@pytest.mark.parametrize("path", _rule_cases(), ids=lambda p: p.stem)
def test_cross_field_rules_are_also_enforced_by_cel(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    _, _, message = expected.partition(": ")
    failures = cel_failures(_root_schema(), doc)
    assert any(message.split(" (")[0] in f for f in failures), (expected, failures)


def test_missing_sha256_is_rejected_by_cel_too() -> None:
    doc = yaml.safe_load((Path(__file__).parent / "invalid" / "missing-sha256.yaml").read_text())
    assert any("sha256 is required" in f for f in cel_failures(_root_schema(), doc))


def test_a_resource_without_inputs_passes_every_cel_rule() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "cnn.yaml").read_text())
    del doc["spec"]["inputs"], doc["spec"]["outputs"]
    parse_resource(doc)
    assert cel_failures(_root_schema(), doc) == []


def test_the_crd_no_longer_requires_inputs_but_keeps_them_non_empty() -> None:
    spec = _root_schema()["properties"]["spec"]
    assert "inputs" not in spec["required"]
    assert spec["properties"]["inputs"]["minItems"] == 1
    contract = spec["properties"]["inputs"]
    status = _root_schema()["properties"]["status"]["properties"]["optimization"]
    assert status["properties"]["contract"]["properties"]["inputs"]["items"] == contract["items"]


@pytest.mark.parametrize("model", ["cnn", "mlp", "transformer"])
def test_what_kubeaccel_init_writes_passes_every_cel_rule(model: str) -> None:
    from kubeaccel_runtime.init.cli import InitRequest, draft_for_model

    request = InitRequest(model=f"examples/models/{model}.onnx", shards=2, gpus=1)
    doc = yaml.safe_load(draft_for_model(request, cwd=ROOT).yaml(f"{model}.yaml"))
    assert cel_failures(_root_schema(), doc) == []
