"""The whole life of an AcceleratedModel on a real cluster, in order: apply, optimize, serve,
update the runtime, update the optimization, fail on a bad digest, delete.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubeaccel_e2e import (
    RELEASE,
    RELEASE_NAMESPACE,
    SHORT_TIMEOUT,
    Kube,
    condition,
    get_model,
    http,
    infer_body,
    jobs_of,
    port_forward,
    ready_pods,
    sh,
    wait_model,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

RUNTIME_PORT = 8080
CHILD_KINDS = (
    "deployments,services,jobs,pods,configmaps,persistentvolumeclaims,poddisruptionbudgets"
)


@pytest.fixture(scope="module")
def model(namespace: Kube, example_cnn: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example CNN applied once for this module (deleted by the last test)."""
    resource = copy.deepcopy(example_cnn)
    resource["metadata"] = {"name": example_cnn["metadata"]["name"]}
    namespace.apply(resource)
    yield resource
    namespace(
        "delete",
        "acceleratedmodel",
        resource["metadata"]["name"],
        "--ignore-not-found",
        "--wait=false",
        check=False,
    )


# --------------------------------------------------------------------------- tests


def test_the_operator_is_available_under_restricted_pod_security(
    release: dict[str, str],
) -> None:
    sh(
        [
            "kubectl",
            "-n",
            RELEASE_NAMESPACE,
            "rollout",
            "status",
            f"deployment/{RELEASE}",
            "--timeout=120s",
        ],
        timeout=150,
    )
    labels = sh(
        [
            "kubectl",
            "get",
            "namespace",
            RELEASE_NAMESPACE,
            "-o",
            "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}",
        ]
    ).stdout
    assert labels == "restricted"


def test_the_example_model_is_optimized_and_becomes_ready(
    namespace: Kube, model: dict[str, Any]
) -> None:
    name = model["metadata"]["name"]
    obj = wait_ready(namespace, name, get_model(namespace, name)["metadata"]["generation"])
    for type_ in ("Validated", "Optimized", "Deployed", "Ready"):
        cond = condition(obj, type_)
        assert cond and cond["status"] == "True", (type_, cond)
    status = obj["status"]
    artifact = status["artifactId"]
    job = f"{name}-opt-{artifact[:10]}"
    assert jobs_of(namespace, name) == {job}
    assert namespace.get("job", job)["status"].get("succeeded") == 1


def test_status_reports_the_optimization_figures(namespace: Kube, model: dict[str, Any]) -> None:
    name = model["metadata"]["name"]
    status = get_model(namespace, name)["status"]
    opt = status["optimization"]
    assert re.fullmatch(r"[0-9a-f]{16}", status["artifactId"])
    assert opt["artifactId"] == status["artifactId"] == status["deployedArtifactId"]
    assert opt["bytesBefore"] > 0 and opt["bytesAfter"] > 0
    assert math.isclose(opt["sizeRatio"], opt["bytesAfter"] / opt["bytesBefore"], rel_tol=0.01)
    assert opt["speedup"] > 0
    assert math.isclose(
        opt["speedup"], opt["latencyBeforeMs"] / opt["latencyAfterMs"], rel_tol=0.05
    )
    shards = model["spec"].get("optimization", {}).get("partition", {}).get("shards", 1)
    assert status["readyShards"] == f"{shards}/{shards}"
    assert len(status["shards"]) == shards
    for shard in status["shards"]:
        assert shard["readyReplicas"] == shard["replicas"] >= 1
    assert status["endpoint"] == (
        f"http://{name}.{namespace.namespace}.svc:{RUNTIME_PORT}/v2/models/{name}"
    )


def test_kubectl_get_shows_the_printer_columns(namespace: Kube, model: dict[str, Any]) -> None:
    name = model["metadata"]["name"]
    lines = namespace("get", "am", name).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "SPEEDUP", "SIZE", "SHARDS", "AGE"]
    row = lines[1].split()
    assert row[0] == name and row[1] == "Ready"
    wide = namespace("get", "am", name, "-o", "wide").stdout.splitlines()[0].split()
    assert {"READY", "ARTIFACT"} <= set(wide)


def test_open_inference_protocol_requests_through_the_service(
    namespace: Kube, model: dict[str, Any]
) -> None:
    name = model["metadata"]["name"]
    with port_forward(namespace, f"service/{name}", RUNTIME_PORT) as base:
        assert http("GET", f"{base}/v2/health/live")[0] == 200
        assert http("GET", f"{base}/v2/health/ready")[0] == 200
        code, meta = http("GET", f"{base}/v2/models/{name}")
        assert code == 200 and meta["name"] == name
        assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in model["spec"]["inputs"]]
        for batch in (1, 3):
            code, answer = http("POST", f"{base}/v2/models/{name}/infer", infer_body(model, batch))
            assert code == 200, answer
            assert answer["model_name"] == name
            assert all(out["shape"][0] == batch for out in answer["outputs"])
        # The contract is enforced through the Service too: a wrong shape is a 400, not a 5xx.
        bad = infer_body(model)
        bad["inputs"][0]["shape"] = [1, *[d + 1 for d in bad["inputs"][0]["shape"][1:]]]
        code, answer = http("POST", f"{base}/v2/models/{name}/infer", bad)
        assert code == 400 and "error" in answer
        assert http("GET", f"{base}/v2/models/no-such-model")[0] == 404


def test_a_runtime_only_update_rolls_the_pods_without_a_new_job(
    namespace: Kube, model: dict[str, Any]
) -> None:
    name = model["metadata"]["name"]
    before = get_model(namespace, name)
    jobs = jobs_of(namespace, name)
    shard = before["status"]["shards"][0]["deployment"]
    pods = ready_pods(namespace, shard)
    delay = float(model["spec"].get("runtime", {}).get("batching", {}).get("maxDelayMs", 2.0))
    namespace(
        "patch",
        "am",
        name,
        "--type=merge",
        "-p",
        json.dumps(
            {"spec": {"runtime": {"batching": {"enabled": True, "maxDelayMs": delay + 1.0}}}}
        ),
    )
    generation = get_model(namespace, name)["metadata"]["generation"]
    assert generation > before["metadata"]["generation"]
    after = wait_ready(namespace, name, generation)
    namespace(
        "rollout",
        "status",
        f"deployment/{shard}",
        f"--timeout={int(SHORT_TIMEOUT)}s",
        timeout=SHORT_TIMEOUT + 30,
    )

    def rolled() -> bool:
        new = ready_pods(namespace, shard)
        return bool(new) and not new & pods

    wait_until("new shard pods replacing the old ones", rolled, SHORT_TIMEOUT)
    assert jobs_of(namespace, name) == jobs, "a runtime-only change must not re-optimize"
    assert after["status"]["artifactId"] == before["status"]["artifactId"]
    assert after["status"]["deployedArtifactId"] == before["status"]["deployedArtifactId"]


def test_an_optimization_update_runs_a_new_job_then_rolls_out(
    namespace: Kube, model: dict[str, Any]
) -> None:
    name = model["metadata"]["name"]
    before = get_model(namespace, name)
    old_artifact = before["status"]["artifactId"]
    seed = int(model["spec"].get("optimization", {}).get("validation", {}).get("seed", 0))
    namespace(
        "patch",
        "am",
        name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"optimization": {"validation": {"seed": seed + 1}}}}),
    )
    generation = get_model(namespace, name)["metadata"]["generation"]

    def new_artifact() -> str | None:
        status = get_model(namespace, name).get("status") or {}
        artifact = status.get("artifactId")
        return artifact if artifact and artifact != old_artifact else None

    artifact = wait_until("a new artifact id", new_artifact, SHORT_TIMEOUT)
    job = f"{name}-opt-{artifact[:10]}"
    wait_until(f"Job {job}", lambda: job in jobs_of(namespace, name), SHORT_TIMEOUT)
    # The previous artifact keeps serving while the new Job runs.
    current = namespace.get("job", job)["status"]
    if not current.get("succeeded"):
        with port_forward(namespace, f"service/{name}", RUNTIME_PORT) as base:
            code, _ = http("POST", f"{base}/v2/models/{name}/infer", infer_body(model))
            assert code == 200
    after = wait_ready(namespace, name, generation)
    assert after["status"]["deployedArtifactId"] == artifact
    assert namespace.get("job", job)["status"].get("succeeded") == 1
    for shard in after["status"]["shards"]:
        dep = namespace.get("deployment", shard["deployment"])
        assert dep["spec"]["template"]["metadata"]["labels"]["kubeaccel.io/artifact-id"] == artifact


def test_a_wrong_digest_fails_the_model_and_deploys_nothing(
    namespace: Kube, example_cnn: dict[str, Any]
) -> None:
    bad = copy.deepcopy(example_cnn)
    name = f"{example_cnn['metadata']['name']}-bad-digest"[:40]
    bad["metadata"] = {"name": name}
    bad["spec"]["source"]["sha256"] = "0" * 64
    namespace.apply(bad)

    def failed(obj: dict[str, Any]) -> dict[str, Any] | None:
        return obj if (obj.get("status") or {}).get("phase") == "Failed" else None

    obj = wait_model(namespace, name, "phase Failed", failed, fail_on_failed=False)
    ready = condition(obj, "Ready")
    assert ready and ready["status"] == "False"
    assert "sha256" in (obj["status"].get("message", "") + str(obj["status"]["conditions"])).lower()
    assert not namespace.names("deployments", f"kubeaccel.io/model={name}")
    events = namespace(
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={name},type=Warning",
        "-o",
        "name",
    ).stdout
    assert events.strip(), "a failure must post a Warning event"
    namespace("delete", "am", name, "--wait=true", "--timeout=120s", timeout=150)


def test_deleting_the_model_removes_everything_it_created(
    namespace: Kube, model: dict[str, Any]
) -> None:
    name = model["metadata"]["name"]
    namespace(
        "delete",
        "am",
        name,
        "--wait=true",
        f"--timeout={int(SHORT_TIMEOUT)}s",
        timeout=SHORT_TIMEOUT + 30,
    )

    def leftovers() -> list[str]:
        out = namespace(
            "get", CHILD_KINDS, "-l", f"kubeaccel.io/model={name}", "-o", "name"
        ).stdout.split()
        return out

    wait_until("garbage collection of every child", lambda: not leftovers(), SHORT_TIMEOUT)
    for kind, child in (("service", name), ("deployment", f"{name}-shard-0")):
        assert namespace.get(kind, child, ignore_missing=True) is None
