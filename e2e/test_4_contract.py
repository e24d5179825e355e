"""A model without a written contract on a real cluster: the Job reads inputs/outputs from
the model, status carries them, the server enforces them; a contract edit that contradicts
the model fails in status while the shards keep serving; `kubeaccel init` writes what the
API server accepts.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubeaccel_e2e import (
    ROOT,
    SHORT_TIMEOUT,
    CommandError,
    Kube,
    condition,
    get_model,
    http,
    infer_body,
    port_forward,
    wait_model,
    wait_ready,
)

pytestmark = pytest.mark.e2e

RUNTIME_PORT = 8080


@pytest.fixture(scope="module")
def uncontracted(namespace: Kube, example_cnn: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example CNN with `inputs`/`outputs` removed, applied once for this module."""
    resource = copy.deepcopy(example_cnn)
    resource["metadata"] = {"name": f"{example_cnn['metadata']['name']}-from-model"[:40]}
    resource["spec"].pop("inputs", None)
    resource["spec"].pop("outputs", None)
    namespace.apply(resource)
    yield resource
    namespace(
        "delete",
        "am",
        resource["metadata"]["name"],
        "--ignore-not-found",
        "--wait=false",
        check=False,
    )


def _contract_of(example: dict[str, Any]) -> dict[str, Any]:
    """The example's written contract without its opt-in parts (ranges, NaN policy)."""
    return {
        kind: [{k: t[k] for k in ("name", "dtype", "shape")} for t in example["spec"][kind]]
        for kind in ("inputs", "outputs")
    }


def test_a_model_without_inputs_is_optimized_deployed_and_ready(
    namespace: Kube, uncontracted: dict[str, Any]
) -> None:
    name = uncontracted["metadata"]["name"]
    obj = wait_ready(namespace, name, get_model(namespace, name)["metadata"]["generation"])
    for type_ in ("Validated", "Optimized", "Deployed", "Ready"):
        cond = condition(obj, type_)
        assert cond and cond["status"] == "True", (type_, cond)
    assert "inputs" not in obj["spec"]


def test_status_carries_the_contract_read_from_the_model(
    namespace: Kube, uncontracted: dict[str, Any], example_cnn: dict[str, Any]
) -> None:
    status = get_model(namespace, uncontracted["metadata"]["name"])["status"]
    assert status["optimization"]["contract"] == _contract_of(example_cnn)


def test_the_server_enforces_the_contract_read_from_the_model(
    namespace: Kube, uncontracted: dict[str, Any]
) -> None:
    name = uncontracted["metadata"]["name"]
    contract = get_model(namespace, name)["status"]["optimization"]["contract"]
    as_written = {"spec": {"inputs": contract["inputs"]}}
    with port_forward(namespace, f"service/{name}", RUNTIME_PORT) as base:
        code, meta = http("GET", f"{base}/v2/models/{name}")
        assert code == 200
        assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [
            (t["name"], t["shape"]) for t in contract["inputs"]
        ]
        code, answer = http("POST", f"{base}/v2/models/{name}/infer", infer_body(as_written, 2))
        assert code == 200, answer
        assert answer["outputs"][0]["shape"] == [2, *contract["outputs"][0]["shape"][1:]]
        bad = infer_body(as_written)
        bad["inputs"][0]["shape"] = [1, *[d + 1 for d in bad["inputs"][0]["shape"][1:]]]
        code, answer = http("POST", f"{base}/v2/models/{name}/infer", bad)
        assert code == 400 and "error" in answer, answer


def test_a_contract_edit_that_contradicts_the_model_fails_and_keeps_serving(
    namespace: Kube, uncontracted: dict[str, Any]
) -> None:
    name = uncontracted["metadata"]["name"]
    contract = get_model(namespace, name)["status"]["optimization"]["contract"]
    wrong = [{**contract["inputs"][0], "dtype": "float16"}]
    namespace("patch", "am", name, "--type=merge", "-p", json.dumps({"spec": {"inputs": wrong}}))

    def refused(obj: dict[str, Any]) -> dict[str, Any] | None:
        validated = condition(obj, "Validated")
        return obj if validated and validated["reason"] == "ContractMismatch" else None

    obj = wait_model(
        namespace, name, "Validated=False (ContractMismatch)", refused, SHORT_TIMEOUT,
        fail_on_failed=False,
    )  # fmt: skip
    validated = condition(obj, "Validated")
    assert obj["status"]["phase"] == "Failed" and validated is not None
    assert validated["status"] == "False"
    assert "dtype float16, the model's is float32" in validated["message"]
    with port_forward(namespace, f"service/{name}", RUNTIME_PORT) as base:
        body = infer_body({"spec": {"inputs": contract["inputs"]}})
        code, answer = http("POST", f"{base}/v2/models/{name}/infer", body)
        assert code == 200, answer  # the shards built for the model still serve
    namespace("patch", "am", name, "--type=merge", "-p", json.dumps({"spec": {"inputs": None}}))
    generation = get_model(namespace, name)["metadata"]["generation"]

    def ready_again(obj: dict[str, Any]) -> bool:
        # Not wait_ready: until the operator sees this generation, the phase is still Failed.
        cond = condition(obj, "Ready")
        fresh = (obj.get("status") or {}).get("observedGeneration") == generation
        return fresh and cond is not None and cond["status"] == "True"

    wait_model(
        namespace, name, f"Ready=True again at generation {generation}", ready_again,
        SHORT_TIMEOUT, fail_on_failed=False,
    )  # fmt: skip


def test_kubeaccel_init_writes_what_the_api_server_accepts(namespace: Kube) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubeaccel_runtime.cli",
            "init",
            "examples/models/cnn.onnx",
            "-o",
            "-",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    resource = yaml.safe_load(proc.stdout)
    resource["metadata"]["name"] = "from-init"
    namespace.apply(resource, dry_run=True)


def test_torchscript_without_inputs_is_rejected_by_the_api_server(
    namespace: Kube, example_cnn: dict[str, Any]
) -> None:
    bad = copy.deepcopy(example_cnn)
    bad["metadata"] = {"name": "torchscript-no-inputs"}
    bad["spec"]["source"]["format"] = "torchscript"
    bad["spec"].pop("inputs", None)
    bad["spec"].pop("outputs", None)
    with pytest.raises(CommandError) as caught:
        namespace.apply(bad, dry_run=True)
    assert "inputs is required when source.format is torchscript" in caught.value.stderr
