"""The CRD on a real API server: structural schema accepted, CEL rules enforced at apply time.

What KMock cannot show (TESTING.md): schema and CEL rejection by the API server itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubeaccel_e2e import ROOT, CommandError, Kube, sh

pytestmark = pytest.mark.e2e

CRD_FILE = next((ROOT / "crds").glob("*.yaml"))
Mutation = Callable[[dict[str, Any]], None]


def test_the_generated_crd_is_accepted_by_server_side_apply(release: dict[str, str]) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    sh(
        [
            "kubectl",
            "wait",
            f"crd/{crd['metadata']['name']}",
            "--for=condition=Established",
            "--timeout=60s",
        ],
        timeout=90,
    )
    # The API server compiles every CEL rule and checks the schema is structural.
    sh(
        [
            "kubectl",
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
            "-f",
            str(CRD_FILE),
        ]
    )
    served = yaml.safe_load(
        sh(["kubectl", "get", "crd", crd["metadata"]["name"], "-o", "yaml"]).stdout
    )
    assert served["spec"]["versions"][0]["schema"] == crd["spec"]["versions"][0]["schema"]
    assert served["spec"]["names"]["shortNames"] == ["am"]


def test_the_example_is_accepted_by_the_api_server(
    namespace: Kube, example_cnn: dict[str, Any]
) -> None:
    resource = copy.deepcopy(example_cnn)
    resource["metadata"] = {"name": example_cnn["metadata"]["name"]}
    namespace.apply(resource, dry_run=True)


def _set(path: str, value: Any) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = obj
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = obj
        for key in parents:
            node = node[key]
        node.pop(last, None)

    return mutate


def _duplicate_input(obj: dict[str, Any]) -> None:
    obj["spec"]["inputs"].append(copy.deepcopy(obj["spec"]["inputs"][0]))


def _zero_dimension(obj: dict[str, Any]) -> None:
    obj["spec"]["inputs"][0]["shape"][-1] = 0


# (mutation, text the API server's error must contain). CEL messages come from
# kubeaccel_api.v1alpha1; the others are OpenAPI schema errors naming the field.
INVALID: dict[str, tuple[list[Mutation], str]] = {
    "cel-missing-sha256": (
        [_drop("spec.source.sha256"), _drop("spec.source.allowUnverified")],
        "sha256 is required unless allowUnverified is true",
    ),
    "cel-cuda-without-gpus": (
        [_set("spec.runtime.executionProvider", "cuda")],
        "resources.gpus must be at least 1 when executionProvider is cuda or tensorrt",
    ),
    "cel-static-int8-without-calibration": (
        [_set("spec.optimization.quantization", {"mode": "static-int8"})],
        "calibration is required when mode is static-int8",
    ),
    "cel-duplicate-input-names": ([_duplicate_input], "input names must be unique"),
    "cel-zero-dimension": ([_zero_dimension], "dimensions must be -1 (dynamic) or >= 1"),
    "cel-s3-without-settings": (
        [_set("spec.storage", {"type": "s3"})],
        "s3 is required when type is s3",
    ),
    "schema-zero-shards": (
        [_set("spec.optimization.partition", {"shards": 0})],
        "spec.optimization.partition.shards",
    ),
    "schema-unknown-quantization-mode": (
        [_set("spec.optimization.quantization", {"mode": "int3"})],
        "spec.optimization.quantization.mode",
    ),
    "schema-unknown-field": ([_set("spec.replicas", 3)], "spec.replicas"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_resource_is_rejected_by_the_api_server(
    namespace: Kube, example_cnn: dict[str, Any], case: str
) -> None:
    mutations, expected = INVALID[case]
    bad = copy.deepcopy(example_cnn)
    bad["metadata"] = {"name": f"bad-{case}"[:40].rstrip("-")}
    for mutate in mutations:
        mutate(bad)
    with pytest.raises(CommandError) as caught:
        namespace.apply(bad, dry_run=True)
    assert expected in caught.value.stderr
