"""Fault injection on a real cluster: what breaks, what the user sees, what is never lost.

One model (the example CNN with 2 replicas per shard, CPU requests sized for a 2-CPU node)
goes through every fault in order: the operator killed (right after apply, while its Job
runs, mid-rollout), the optimizer's pod killed, a Job out of memory, a shard pod deleted
under load, the node drained, the API server stopped, shards that cannot start, and its
artifacts tampered with on the volume. After each one: the expected outcome, exactly one
Job per artifact and exactly the shards' Deployments.

Run on its own with `pytest e2e -m faults` (it takes tens of minutes on a 2-CPU node: four
optimizations of the example run in it).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubeaccel_e2e import (
    READY_TIMEOUT,
    RELEASE,
    SHORT_TIMEOUT,
    Kube,
    condition,
    get_model,
    wait_ready,
    wait_until,
)
from kubeaccel_faults import (
    ANSWERS_SCRIPT,
    LOAD_SCRIPT,
    assert_nothing_lost_or_duplicated,
    children,
    client_output,
    client_pod,
    cluster_tool_problem,
    elapsed,
    is_ready,
    kill_operator,
    operator,
    operator_pod,
    restart_operator,
    restarts,
    sample_answers,
    service_url,
    shard_pods,
    start_apiserver,
    start_client,
    stop_apiserver,
    wait_client_started,
    wait_operator_back,
    wait_unstuck,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

NAME = "cnn-faults"
# The bound: a shard that cannot start takes the resource out of Deploying within
# a minute (the server gives up 30 s after a failed load; the pod watch reports the exit).
FAIL_WITHIN = 60.0
# How long the API server stays down: the fault itself, not a wait for something.
OUTAGE_SECONDS = 20.0


@pytest.fixture(scope="module")
def resource(namespace: Kube, example_cnn: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example with 2 replicas per shard (+ PDBs); applied by the first test."""
    res = copy.deepcopy(example_cnn)
    res["metadata"] = {"name": NAME}
    runtime = res["spec"].setdefault("runtime", {})
    runtime["replicas"] = 2
    # 2 shards x 2 replicas + a surge pod per shard + the optimizer's 1 CPU fit in 2 CPUs.
    runtime["resources"] = {**runtime.get("resources", {}), "cpu": "200m"}
    yield res
    namespace("delete", "am", NAME, "--ignore-not-found", "--wait=false", check=False)


def generation(kube: Kube) -> int:
    return int(get_model(kube, NAME)["metadata"]["generation"])


def patch_spec(kube: Kube, spec: dict[str, Any]) -> int:
    """Merge-patch the spec; the new generation."""
    before = generation(kube)
    kube("patch", "am", NAME, "--type=merge", "-p", json.dumps({"spec": spec}))
    after = generation(kube)
    assert after > before, "the patch changed nothing"
    return after


def new_artifact(kube: Kube, resource: dict[str, Any], seed: int) -> tuple[int, str]:
    """Change the optimization (validation seed): (generation, the new artifact id)."""
    old = get_model(kube, NAME)["status"]["artifactId"]
    gen = patch_spec(kube, {"optimization": {"validation": {"seed": seed}}})

    def changed() -> str | None:
        artifact = (get_model(kube, NAME).get("status") or {}).get("artifactId")
        return artifact if artifact and artifact != old else None

    return gen, wait_until("a new artifact id", changed, SHORT_TIMEOUT)


def job_of(kube: Kube, artifact: str) -> dict[str, Any]:
    """The Job of an artifact, once it exists."""

    def found() -> dict[str, Any] | None:
        for job in children(kube, NAME, "jobs"):
            if job["metadata"]["labels"].get("kubeaccel.io/artifact-id") == artifact:
                return job
        return None

    job: dict[str, Any] = wait_until(f"the Job of artifact {artifact}", found, SHORT_TIMEOUT)
    return job


def running_job_pod(kube: Kube, job: str) -> dict[str, Any]:
    """The Job's pod once its container runs."""

    def running() -> dict[str, Any] | None:
        pods = kube.get("pods", selector=f"batch.kubernetes.io/job-name={job}")["items"]
        return next((p for p in pods if p["status"].get("phase") == "Running"), None)

    pod: dict[str, Any] = wait_until(f"a running pod of Job {job}", running, SHORT_TIMEOUT)
    return pod


def undo(change: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that takes back `change` (None removes what it added)."""
    out: dict[str, Any] = {}
    for key, value in change.items():
        before = original.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            out[key] = undo(value, before)
        else:
            out[key] = copy.deepcopy(before)
    return out


def warnings(kube: Kube, reason: str) -> list[str]:
    """Messages of the Warning Events with `reason` on the model."""
    events = kube(
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={NAME},type=Warning",
        "-o",
        "json",
    ).stdout
    return [e.get("message", "") for e in json.loads(events)["items"] if e.get("reason") == reason]


# --------------------------------------------------------------------------- the operator killed


def test_the_operator_killed_right_after_apply_creates_one_job_and_converges(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    namespace.apply(resource)
    killed = kill_operator()
    had_job = bool(children(namespace, NAME, "jobs"))
    wait_operator_back(killed)
    wait_ready(namespace, NAME, generation(namespace))
    print(f"the operator was killed {'after' if had_job else 'before'} it created the Job")
    assert len(children(namespace, NAME, "jobs")) == 1
    assert_nothing_lost_or_duplicated(namespace, resource)


def test_the_operator_killed_while_the_job_runs_converges_on_the_same_job(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    gen, artifact = new_artifact(namespace, resource, seed=101)
    job = job_of(namespace, artifact)
    running_job_pod(namespace, job["metadata"]["name"])
    restart_operator()
    status = wait_ready(namespace, NAME, gen)["status"]
    assert status["deployedArtifactId"] == artifact
    assert job_of(namespace, artifact)["metadata"]["uid"] == job["metadata"]["uid"]
    assert_nothing_lost_or_duplicated(namespace, resource)


def test_the_operator_killed_mid_rollout_of_a_new_artifact_converges(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    gen, artifact = new_artifact(namespace, resource, seed=102)
    job = job_of(namespace, artifact)

    def rolling() -> bool:
        deployments = children(namespace, NAME, "deployments")
        moved = [
            d
            for d in deployments
            if d["metadata"]["labels"]["kubeaccel.io/artifact-id"] == artifact
        ]
        done = all(
            (d.get("status") or {}).get("updatedReplicas") == d["spec"]["replicas"]
            and (d.get("status") or {}).get("availableReplicas") == d["spec"]["replicas"]
            for d in moved
        )
        return bool(moved) and not done

    wait_until("the shards rolling to the new artifact", rolling, READY_TIMEOUT, interval=0.5)
    restart_operator()
    status = wait_ready(namespace, NAME, gen)["status"]
    assert status["deployedArtifactId"] == artifact
    assert job_of(namespace, artifact)["metadata"]["uid"] == job["metadata"]["uid"]
    for pod in shard_pods(namespace, NAME):
        assert pod["metadata"]["labels"]["kubeaccel.io/artifact-id"] == artifact
    assert_nothing_lost_or_duplicated(namespace, resource)


# --------------------------------------------------------------------------- the optimizer


def test_the_optimizers_pod_killed_is_retried_by_its_job_and_the_old_artifact_serves(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    serving = get_model(namespace, NAME)["status"]["deployedArtifactId"]
    gen, artifact = new_artifact(namespace, resource, seed=103)
    job = job_of(namespace, artifact)
    pod = running_job_pod(namespace, job["metadata"]["name"])
    namespace("delete", "pod", pod["metadata"]["name"], "--grace-period=0", "--force")
    # While the Job retries, the previous artifact keeps serving.
    status = get_model(namespace, NAME)["status"]
    assert status["deployedArtifactId"] == serving
    status = wait_ready(namespace, NAME, gen)["status"]
    assert status["deployedArtifactId"] == artifact
    finished = job_of(namespace, artifact)
    assert finished["metadata"]["uid"] == job["metadata"]["uid"]
    assert finished["status"].get("succeeded") == 1
    print(
        f"Job {job['metadata']['name']}: failed pods counted {finished['status'].get('failed', 0)}"
    )
    assert_nothing_lost_or_duplicated(namespace, resource)


def test_a_job_out_of_memory_fails_naming_the_limit_and_the_old_artifact_keeps_serving(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    before = get_model(namespace, NAME)
    serving = before["status"]["deployedArtifactId"]
    seed = before["spec"]["optimization"].get("validation", {}).get("seed", 0)
    deployment = operator().get("deployment", RELEASE)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    memory = env.get("KUBEACCEL_OPTIMIZER_MEMORY")
    restore = f"KUBEACCEL_OPTIMIZER_MEMORY={memory}" if memory else "KUBEACCEL_OPTIMIZER_MEMORY-"
    operator()("set", "env", f"deployment/{RELEASE}", "KUBEACCEL_OPTIMIZER_MEMORY=96Mi")
    operator()("rollout", "status", f"deployment/{RELEASE}", "--timeout=180s", timeout=210)
    try:
        new_artifact(namespace, resource, seed=104)

        def failed() -> dict[str, Any] | None:
            obj = get_model(namespace, NAME)
            return obj if (obj.get("status") or {}).get("phase") == "Failed" else None

        obj = wait_until("phase Failed", failed, READY_TIMEOUT)
        optimized = condition(obj, "Optimized")
        assert optimized and optimized["reason"] == "OOMKilled", optimized
        assert "KUBEACCEL_OPTIMIZER_MEMORY (Helm value optimizer.memory)" in optimized["message"]
        assert "96Mi" in optimized["message"]
        assert warnings(namespace, "OOMKilled"), "a Warning Event must say OOMKilled"
        assert obj["status"]["deployedArtifactId"] == serving
        answers = sample_answers(namespace, NAME, 5)
        assert set(answers["statuses"]) == {"200"}, answers
    finally:
        operator()("set", "env", f"deployment/{RELEASE}", restore)
        operator()("rollout", "status", f"deployment/{RELEASE}", "--timeout=180s", timeout=210)
    # Back to the artifact that serves: Ready again, no new Job.
    jobs = {j["metadata"]["uid"] for j in children(namespace, NAME, "jobs")}
    gen = patch_spec(namespace, {"optimization": {"validation": {"seed": seed}}})
    status = wait_ready(namespace, NAME, gen)["status"]
    assert status["deployedArtifactId"] == serving
    assert {j["metadata"]["uid"] for j in children(namespace, NAME, "jobs")} <= jobs
    assert_nothing_lost_or_duplicated(namespace, resource)


# --------------------------------------------------------------------------- serving


def test_a_shard_pod_deleted_under_load_is_invisible_to_a_client_that_retries(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    budgets = {p["metadata"]["name"] for p in children(namespace, NAME, "poddisruptionbudgets")}
    assert budgets == {f"{NAME}-shard-0", f"{NAME}-shard-1"}
    client = start_client(
        namespace,
        "load",
        LOAD_SCRIPT,
        [service_url(namespace, NAME), NAME, "120", "4"],
        labels={"kubeaccel.io/client": "true"},
    )
    wait_client_started(namespace, client)
    for shard in (0, 1):
        victim = shard_pods(namespace, NAME, shard)[0]["metadata"]["name"]
        namespace("delete", "pod", victim, "--wait=false")

        def replaced(shard: int = shard, victim: str = victim) -> bool:
            pods = shard_pods(namespace, NAME, shard)
            names = {p["metadata"]["name"] for p in pods}
            return sum(is_ready(p) for p in pods) == 2 and victim not in names

        wait_until(f"shard {shard} back to 2 ready replicas", replaced, SHORT_TIMEOUT)
    result = json.loads(client_output(namespace, client, 300).strip().splitlines()[-1])
    per_10k = 1e4 * result["errors"] / max(1, result["requests"])
    print(
        f"shard pods deleted under load: {result['requests']} requests, {result['errors']} errors "
        f"({per_10k:.1f} per 10k), {result['retries']} retries, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms"
    )
    assert result["requests"] > 0
    assert result["errors"] == 0, result


def test_a_drained_node_keeps_a_replica_of_each_shard_and_everything_returns(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    gen = generation(namespace)
    node = shard_pods(namespace, NAME, 0)[0]["spec"]["nodeName"]
    try:
        # On one node the drain cannot finish (the budgets keep a replica of each shard
        # where it is): it evicts what it may and gives up at its timeout.
        drain = namespace(
            "drain",
            node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=90s",
            check=False,
            timeout=150,
        )
        print(f"kubectl drain exited {drain.returncode}: {drain.stderr.strip()[-500:]}")
        for shard in (0, 1):
            dep = namespace.get("deployment", f"{NAME}-shard-{shard}")
            assert (dep.get("status") or {}).get("availableReplicas", 0) >= 1, (
                shard,
                dep["status"],
            )
    finally:
        namespace("uncordon", node)
    wait_unstuck(namespace, NAME)
    status = wait_ready(namespace, NAME, gen)["status"]
    assert status["readyShards"] == "2/2"
    operator_pod()
    assert_nothing_lost_or_duplicated(namespace, resource)


def test_the_operator_rides_out_an_api_server_outage_without_a_restart(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    problem = cluster_tool_problem()
    if problem is not None:
        pytest.skip(f"cannot stop the API server here: {problem}")
    before = operator_pod()
    stop_apiserver()
    try:
        time.sleep(OUTAGE_SECONDS)  # the outage itself
    finally:
        start_apiserver()
    after = operator_pod()
    assert after["metadata"]["name"] == before["metadata"]["name"], "the operator pod was replaced"
    assert restarts(after) == restarts(before), "the operator restarted"
    # It reconnected by itself: a change made now is handled.
    delay = resource["spec"]["runtime"].get("batching", {}).get("maxDelayMs", 2)
    gen = patch_spec(namespace, {"runtime": {"batching": {"maxDelayMs": delay + 1}}})
    wait_ready(namespace, NAME, gen)
    assert restarts(operator_pod()) == restarts(before)
    assert_nothing_lost_or_duplicated(namespace, resource)


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        # Runtime-only changes (the artifact stays; only the pods roll). Asking for CUDA is
        # not one: the provider is part of the serving target, so it means a new artifact,
        # optimized on the GPU image, and fails (or not) in that Job.
        ({"resources": {"memory": "32Mi"}}, "OOMKilled", "raise spec.runtime.resources.memory"),
        ({"image": "kubeaccel/no-such-image:0"}, "ImagePullFailed", "cannot pull image"),
    ],
    ids=["server-out-of-memory", "image-not-pullable"],
)
def test_a_shard_that_cannot_start_leaves_deploying_within_a_minute_with_its_reason(
    namespace: Kube, resource: dict[str, Any], change: dict[str, Any], reason: str, words: str
) -> None:
    serving = get_model(namespace, NAME)["status"]["deployedArtifactId"]
    old_pods = {p["metadata"]["name"] for p in shard_pods(namespace, NAME)}
    original = copy.deepcopy(resource["spec"]["runtime"])
    patch_spec(namespace, {"runtime": change})
    try:
        wait_until(
            "pods of the changed template",
            lambda: {p["metadata"]["name"] for p in shard_pods(namespace, NAME)} - old_pods,
            SHORT_TIMEOUT,
            interval=0.5,
        )
        started = time.monotonic()

        def failed() -> dict[str, Any] | None:
            obj = get_model(namespace, NAME)
            return obj if (obj.get("status") or {}).get("phase") == "Failed" else None

        obj = wait_until(f"phase Failed ({reason})", failed, FAIL_WITHIN, interval=1.0)
        print(
            f"{reason}: the resource left Deploying {elapsed(started):.0f} s after the pods appeared"
        )
        ready = condition(obj, "Ready")
        assert ready and ready["status"] == "False" and ready["reason"] == reason, ready
        assert words in ready["message"], ready["message"]
        assert any(words in m for m in warnings(namespace, reason)), "no Warning Event with it"
        # The previous pods keep serving (maxUnavailable 0).
        assert obj["status"]["deployedArtifactId"] == serving
        for shard in (0, 1):
            dep = namespace.get("deployment", f"{NAME}-shard-{shard}")
            assert (dep.get("status") or {}).get("availableReplicas", 0) >= 1
    finally:
        gen = patch_spec(namespace, {"runtime": undo(change, original)})
    wait_unstuck(namespace, NAME)
    wait_ready(namespace, NAME, gen)
    assert_nothing_lost_or_duplicated(namespace, resource)


# --------------------------------------------------------------------------- the artifacts (last)


FLIP_SCRIPT = """
import sys
path = sys.argv[1]
with open(path, "r+b") as f:
    f.seek(0, 2)
    middle = f.tell() // 2
    f.seek(middle)
    byte = f.read(1)
    f.seek(middle)
    f.write(bytes([byte[0] ^ 0x01]))
print("{}")
"""


def test_a_tampered_artifact_is_refused_ready_goes_false_and_nothing_wrong_is_answered(
    namespace: Kube, resource: dict[str, Any]
) -> None:
    status = get_model(namespace, NAME)["status"]
    artifact = status["deployedArtifactId"]
    watcher = start_client(
        namespace,
        "answers",
        ANSWERS_SCRIPT,
        [service_url(namespace, NAME), NAME, "240"],
        labels={"kubeaccel.io/client": "true"},
    )
    wait_client_started(namespace, watcher)
    # The artifacts volume is mounted read-only by the shards: change it from a pod that
    # mounts the claim read-write, as anything with access to the volume could.
    flip = client_pod(
        "tamper",
        FLIP_SCRIPT,
        [f"/artifacts/{NAME}/{artifact}/shard-1.onnx"],
        volumes=[
            {"name": "artifacts", "persistentVolumeClaim": {"claimName": f"{NAME}-artifacts"}}
        ],
        mounts=[{"name": "artifacts", "mountPath": "/artifacts"}],
    )
    namespace.apply(flip)
    client_output(namespace, "tamper", SHORT_TIMEOUT)

    def refused() -> dict[str, Any] | None:
        obj = get_model(namespace, NAME)
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == "ArtifactInvalid" else None

    # Seen by the periodic digest check (60 s), then the server gives up (30 s).
    obj = wait_until("Ready=False with reason ArtifactInvalid", refused, 2 * SHORT_TIMEOUT)
    ready = condition(obj, "Ready")
    assert ready and ready["status"] == "False" and "sha256 mismatch" in ready["message"], ready
    assert warnings(namespace, "ArtifactInvalid"), "no Warning Event ArtifactInvalid"
    answers = json.loads(client_output(namespace, watcher, 300).strip().splitlines()[-1])
    print(f"answers around the tampering: {answers}")
    assert set(answers["statuses"]) <= {"200", "503", "0"}, answers
    assert answers["statuses"].get("200", 0) > 0
    assert len(answers["outputs"]) == 1, "every answer given must be the verified model's"
