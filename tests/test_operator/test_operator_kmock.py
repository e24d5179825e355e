"""The real operator process (kopf, `python -m kubeaccel_operator`) against the API emulator.

The test acts as the user (kubectl) and as the controllers (Job, Deployment, kubelet)
over plain HTTP; the operator only sees a Kubernetes API. Every wait polls with a
deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kmock_support import (
    Api,
    EmulatorThread,
    OperatorProcess,
    finish_job,
    kubeconfig_for,
    make_available,
    wait_for,
)
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.validation import parse_resource
from kubeaccel_operator.kube import PEERING_PERMISSIONS, REQUIRED_PERMISSIONS
from operator_samples import GPU2, NAME, NS, deep_merge, summary
from tcp_front import TcpFront

SPEC: dict[str, Any] = deep_merge(
    {
        "source": {"uri": "pvc://models/mnist.onnx", "sha256": "5f" * 32},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
    },
    {
        **GPU2,
        "runtime": {
            **GPU2["runtime"],
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    },
)


ONE_SHARD: dict[str, Any] = deep_merge(
    SPEC, {"optimization": {"partition": {"shards": 1}}, "runtime": {"replicas": 1}}
)


def manifest(name: str = NAME, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec if spec is not None else SPEC,
    }


def aid_of(spec: dict[str, Any]) -> str:
    return artifact_id(parse_resource(manifest(spec=spec)).spec)


class Env:
    """The emulator, an HTTP client to it, and the operator process."""

    def __init__(self, emu: EmulatorThread, tmp: Path) -> None:
        self.emu = emu
        self.api = Api(emu.url)
        config = tmp / "kubeconfig"
        config.write_text(emu.kubeconfig())
        self.operator = OperatorProcess(str(config), str(tmp / "operator.log"), namespaces=NS)

    def model(self, name: str = NAME) -> dict[str, Any]:
        obj = self.api.get("AcceleratedModel", NS, name)
        assert obj is not None
        return obj

    def status(self, name: str = NAME) -> dict[str, Any]:
        return dict(self.model(name).get("status") or {})

    def condition(self, ctype: str, name: str = NAME) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == ctype), {})

    def jobs(self) -> list[dict[str, Any]]:
        return self.api.list("Job", NS)

    def deployments(self) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.api.list("Deployment", NS)}

    def event_reasons(self, name: str = NAME) -> list[str]:
        return [
            e["reason"] for e in self.api.list("Event", NS) if e["involvedObject"]["name"] == name
        ]

    def adds(self, kind: str, name: str) -> int:
        return sum(
            1
            for event, k, _, n, _ in self.emu.writes()
            if event == "ADDED" and k == kind and n == name
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with EmulatorThread() as emu:
        e = Env(emu, tmp_path)
        try:
            yield e
        finally:
            code = e.operator.stop()
            if code not in (0, -15):
                print(e.operator.log())


def one_job(env: Env, artifact: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next(
            (
                j
                for j in env.jobs()
                if j["metadata"]["labels"]["kubeaccel.io/artifact-id"] == artifact
            ),
            None,
        )

    job: dict[str, Any] = wait_for(found, f"the Job of artifact {artifact}")
    return job


def shards_serving(env: Env, artifact: str, count: int) -> dict[str, dict[str, Any]]:
    def rolled() -> dict[str, dict[str, Any]] | None:
        deployments = env.deployments()
        ok = len(deployments) == count and all(
            d["metadata"]["labels"]["kubeaccel.io/artifact-id"] == artifact
            for d in deployments.values()
        )
        return deployments if ok else None

    result: dict[str, dict[str, Any]] = wait_for(rolled, f"{count} shard(s) of artifact {artifact}")
    return result


def available(env: Env) -> None:
    for name in env.deployments():
        make_available(env.api, NS, name)


def ready(env: Env, generation: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = env.status()
        cond = env.condition("Ready")
        done = status.get("phase") == "Ready" and cond.get("status") == "True"
        return status if done and status.get("observedGeneration") == generation else None

    status: dict[str, Any] = wait_for(check, f"Ready=True at generation {generation}")
    return status


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_the_operator_takes_a_resource_from_apply_to_ready_through_updates_and_deletion(
    env: Env,
) -> None:
    env.operator.start()
    env.api.create(manifest())
    first = aid_of(SPEC)

    # Optimizing: a Job validating fp16 on one GPU of the serving type.
    job = one_job(env, first)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["template"]["spec"]["tolerations"] == SPEC["runtime"]["tolerations"]
    assert env.api.names("ConfigMap", NS) == {f"{NAME}-spec"}
    assert env.api.names("PersistentVolumeClaim", NS) == {f"{NAME}-artifacts"}
    wait_for(lambda: env.status().get("phase") == "Optimizing", "phase Optimizing")

    # Job done: the summary lands in status and the shards appear with their GPU fields.
    finish_job(env.api, NS, job["metadata"]["name"], summary(first))
    deployments = shards_serving(env, first, 2)
    for i, name in enumerate(sorted(deployments)):
        pod = pod_spec(deployments[name])
        assert pod["containers"][0]["resources"]["limits"] == {
            "memory": "8Gi",
            "nvidia.com/gpu": "2",
        }
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100"}
        assert pod["tolerations"] == SPEC["runtime"]["tolerations"]
        assert ("--next" in pod["containers"][0]["args"]) is (i == 0)
    assert wait_for(
        lambda: env.api.names("Service", NS) == {NAME, f"{NAME}-shard-0", f"{NAME}-shard-1"},
        "services",
    )
    pdbs = {f"{NAME}-shard-0", f"{NAME}-shard-1"}
    assert wait_for(lambda: env.api.names("PodDisruptionBudget", NS) == pdbs, "budgets")

    # Shards available: Ready.
    available(env)
    status = ready(env, 1)
    assert status["readyShards"] == "2/2"
    assert status["endpoint"] == f"http://{NAME}.{NS}.svc:8080/v2/models/{NAME}"
    assert (
        status["optimization"]["speedup"] == 2.0 and status["optimization"]["artifactId"] == first
    )
    assert "finalizers" not in env.model()["metadata"]  # ownerReferences do the cleanup
    wait_for(
        lambda: {"Optimizing", "Optimized", "Deploying", "Ready"} <= set(env.event_reasons()),
        "events",
    )

    # Drift: a Service deleted and a Deployment edited by hand are restored.
    env.api.delete("Service", NS, f"{NAME}-shard-1")
    env.api.patch("Deployment", NS, f"{NAME}-shard-0", {"spec": {"replicas": 5}})
    wait_for(lambda: env.api.get("Service", NS, f"{NAME}-shard-1"), "the deleted Service back")
    wait_for(
        lambda: env.deployments()[f"{NAME}-shard-0"]["spec"]["replicas"] == 2, "replicas restored"
    )
    available(env)

    # Runtime-only update: the shards roll, no Job runs.
    before = {
        n: d["spec"]["template"]["metadata"]["annotations"]["kubeaccel.io/spec-hash"]
        for n, d in env.deployments().items()
    }
    env.api.patch(
        "AcceleratedModel", NS, NAME, {"spec": {"runtime": {"batching": {"enabled": True}}}}
    )

    def rolled() -> bool:
        now = env.deployments()
        return all(
            now[n]["spec"]["template"]["metadata"]["annotations"]["kubeaccel.io/spec-hash"] != h
            for n, h in before.items()
        )

    wait_for(rolled, "pods rolled for the runtime change")
    assert {j["metadata"]["name"] for j in env.jobs()} == {job["metadata"]["name"]}
    env_spec = json.loads(
        pod_spec(env.deployments()[f"{NAME}-shard-0"])["containers"][0]["env"][0]["value"]
    )
    assert env_spec["runtime"]["batching"]["enabled"] is True
    available(env)
    ready(env, 2)

    # An optimization change that fails: the Job fails, the old shards keep serving.
    failing = deep_merge(
        SPEC,
        {
            "optimization": {"quantization": {"mode": "auto"}},
            "runtime": {"batching": {"enabled": True}},
        },
    )
    env.api.patch(
        "AcceleratedModel", NS, NAME, {"spec": {"optimization": {"quantization": {"mode": "auto"}}}}
    )
    bad = one_job(env, aid_of(failing))
    # The superseded Job is deleted in the same pass, after the new one is created.
    wait_for(
        lambda: env.api.get("Job", NS, job["metadata"]["name"]) is None, "superseded Job removed"
    )
    finish_job(
        env.api,
        NS,
        bad["metadata"]["name"],
        '{"error": "no candidate within the accuracy budget"}',
        succeeded=False,
    )
    wait_for(lambda: env.status().get("phase") == "Failed", "phase Failed")
    optimized = env.condition("Optimized")
    assert optimized["status"] == "False" and optimized["reason"] == "BackoffLimitExceeded"
    assert optimized["message"].endswith("no candidate within the accuracy budget")
    status = env.status()
    assert status["deployedArtifactId"] == first and status["endpoint"]
    assert all(
        d["metadata"]["labels"]["kubeaccel.io/artifact-id"] == first
        for d in env.deployments().values()
    )

    # An optimization change that succeeds with one shard: new Job, then the roll.
    one_shard = deep_merge(
        failing, {"optimization": {"partition": {"shards": 1}, "quantization": {"mode": "fp16"}}}
    )
    env.api.patch(
        "AcceleratedModel",
        NS,
        NAME,
        {"spec": {"optimization": {"partition": {"shards": 1}, "quantization": {"mode": "fp16"}}}},
    )
    second = aid_of(one_shard)
    new_job = one_job(env, second)
    assert set(env.deployments()) == {f"{NAME}-shard-0", f"{NAME}-shard-1"}  # still the old ones
    finish_job(env.api, NS, new_job["metadata"]["name"], summary(second))
    shards_serving(env, second, 1)
    wait_for(
        lambda: env.api.names("Service", NS) == {NAME, f"{NAME}-shard-0"}, "shard-1 Service removed"
    )
    available(env)
    assert ready(env, 4)["readyShards"] == "1/1"

    # Deletion: the owner references take every child away; nothing is re-created.
    env.api.delete("AcceleratedModel", NS, NAME)
    kinds = (
        "ConfigMap",
        "PersistentVolumeClaim",
        "Job",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    )
    wait_for(
        lambda: not any(env.api.list(kind, NS) for kind in kinds), "every child garbage-collected"
    )
    env.api.create(manifest("other"))
    one_job(env, aid_of(SPEC))  # the operator is alive and has processed everything since
    assert not [
        o
        for kind in kinds
        for o in env.api.list(kind, NS)
        if o["metadata"]["labels"].get("kubeaccel.io/model") == NAME
    ]

    # Every call the operator made is covered by REQUIRED_PERMISSIONS (RBAC).
    granted = {(g, r, v) for g, r, verbs in REQUIRED_PERMISSIONS for v in verbs}
    made = {
        (g, r, v)
        for agent, v, g, r in env.emu.emulator.calls
        if not agent.startswith("Python-urllib")
    }
    assert made, "no API calls recorded"
    assert made <= granted, sorted(made - granted)
    peering = {(g, r) for g, r, _ in PEERING_PERMISSIONS}
    assert not {(g, r) for g, r, _ in made} & peering  # standalone: no peering calls


def test_a_restart_mid_way_converges_without_duplicates(env: Env) -> None:
    env.operator.start()
    spec = ONE_SHARD
    env.api.create(manifest(spec=spec))
    artifact = aid_of(spec)
    job = one_job(env, artifact)
    assert env.operator.stop() in (0, -15)

    # Down: the Job finishes meanwhile. Up again: resume picks it up.
    finish_job(env.api, NS, job["metadata"]["name"], summary(artifact))
    env.operator.start()
    shards_serving(env, artifact, 1)
    available(env)
    ready(env, 1)
    assert env.operator.stop() in (0, -15)

    # Once more, with everything in place: nothing is created twice.
    env.operator.start()
    make_available(env.api, NS, f"{NAME}-shard-0")
    ready(env, 1)
    jobs = env.jobs()
    assert [j["metadata"]["uid"] for j in jobs] == [job["metadata"]["uid"]]
    for kind, name in [
        ("Job", job["metadata"]["name"]),
        ("ConfigMap", f"{NAME}-spec"),
        ("PersistentVolumeClaim", f"{NAME}-artifacts"),
        ("Deployment", f"{NAME}-shard-0"),
        ("Service", f"{NAME}-shard-0"),
        ("Service", NAME),
    ]:
        assert env.adds(kind, name) == 1, (kind, name)


def test_an_invalid_resource_fails_with_the_field_path_and_recovers_when_fixed(env: Env) -> None:
    env.operator.start()
    # A real API server's schema would refuse this; the operator must not trust that.
    bad = deep_merge(SPEC, {"runtime": {"replicas": -1}})
    env.api.create(manifest(spec=bad))
    wait_for(lambda: env.condition("Validated").get("status") == "False", "Validated=False")
    status = env.status()
    assert status["phase"] == "Failed"
    assert env.condition("Validated")["message"].startswith("spec.runtime.replicas:")
    assert env.condition("Ready")["reason"] == "InvalidSpec"
    wait_for(lambda: "InvalidSpec" in env.event_reasons(), "a Warning event")
    assert env.jobs() == []
    env.api.patch("AcceleratedModel", NS, NAME, {"spec": {"runtime": {"replicas": 2}}})
    one_job(env, aid_of(SPEC))
    wait_for(
        lambda: env.condition("Validated").get("status") == "True", "Validated=True after the fix"
    )


def test_a_lost_watch_event_is_recovered_by_the_periodic_resync(env: Env) -> None:
    env.operator.env["KUBEACCEL_RESYNC_SECONDS"] = "1"
    env.operator.start()
    emulator = env.emu.emulator
    assert emulator is not None
    wait_for(
        lambda: any(
            c[1:] == ("watch", "kubeaccel.io", "acceleratedmodels") for c in emulator.calls
        ),
        "kopf watching AcceleratedModels",
    )
    emulator.mute.add("AcceleratedModel")  # kopf never hears of the new resource
    env.api.create(manifest())
    one_job(env, aid_of(SPEC))
    wait_for(lambda: env.status().get("phase") == "Optimizing", "status from the resync")


def kubelet_reports(env: Env, deployment: dict[str, Any], status: dict[str, Any]) -> str:
    """Do what the ReplicaSet controller and the kubelet do: a pod of the template, its status."""
    template = deployment["spec"]["template"]
    replica_set = f"{deployment['metadata']['name']}-5f7d9"
    name = f"{replica_set}-{len(env.api.list('Pod', NS))}"
    # The emulator has no ReplicaSets: the reference borrows the Deployment's uid so that
    # its garbage collector keeps the pod.
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": replica_set,
        "uid": deployment["metadata"]["uid"],
        "controller": True,
    }
    env.api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": template["metadata"]["labels"],
                "annotations": template["metadata"]["annotations"],
                "ownerReferences": [owner],
            },
            "spec": template["spec"],
        }
    )
    env.api.patch("Pod", NS, name, {"status": status}, sub="status")
    return name


def test_a_shard_that_cannot_start_fails_the_resource_with_its_last_words_at_once(
    env: Env,
) -> None:
    # No periodic resync: only the pod watch can bring the news.
    env.operator.env["KUBEACCEL_RESYNC_SECONDS"] = "0"
    env.operator.start()
    spec = deep_merge(SPEC, {"optimization": {"partition": {"shards": 1}}})
    env.api.create(manifest(spec=spec))
    artifact = aid_of(spec)
    job = one_job(env, artifact)
    finish_job(env.api, NS, job["metadata"]["name"], summary(artifact))
    deployment = shards_serving(env, artifact, 1)[f"{NAME}-shard-0"]
    wait_for(lambda: env.status().get("phase") == "Deploying", "phase Deploying")

    last_words = json.dumps(
        {
            "error": "shard 0: executionProvider cuda requires CUDAExecutionProvider, but this "
            "onnxruntime offers only CPUExecutionProvider",
            "reason": "ProviderUnavailable",
        }
    )
    pod = kubelet_reports(
        env,
        deployment,
        {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "runtime",
                    "image": "kubeaccel/runtime:test",
                    "ready": False,
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                    "lastState": {
                        "terminated": {"exitCode": 1, "reason": "Error", "message": last_words}
                    },
                }
            ],
        },
    )
    wait_for(lambda: env.status().get("phase") == "Failed", "phase Failed")
    cond = env.condition("Ready")
    assert cond["status"] == "False" and cond["reason"] == "ProviderUnavailable"
    assert cond["message"].startswith(f"shard 0 (pod {pod}): container runtime exited with code 1")
    assert "requires CUDAExecutionProvider" in cond["message"]
    wait_for(lambda: "ProviderUnavailable" in env.event_reasons(), "a Warning event")

    # Fixed (here: the pod comes up): the same watch takes the resource to Ready.
    env.api.delete("Pod", NS, pod)
    make_available(env.api, NS, f"{NAME}-shard-0")
    assert ready(env, 1)["readyShards"] == "1/1"
    assert [e for e in env.event_reasons() if e == "ProviderUnavailable"] == [
        "ProviderUnavailable"
    ]  # posted once, not on every pod event

    granted = {(g, r, v) for g, r, verbs in REQUIRED_PERMISSIONS for v in verbs}
    made = {
        (g, r, v)
        for agent, v, g, r in env.emu.emulator.calls
        if not agent.startswith("Python-urllib")
    }
    assert ("", "pods", "watch") in made
    assert made <= granted, sorted(made - granted)


def test_the_operator_rides_out_an_api_server_outage_without_a_restart(
    env: Env, tmp_path: Path
) -> None:
    with TcpFront(env.emu.url) as proxy:
        config = tmp_path / "kubeconfig-proxy"
        config.write_text(kubeconfig_for(proxy.url))
        env.operator.env["KUBECONFIG"] = str(config)
        env.operator.env["KUBEACCEL_RETRY_DELAY"] = "1"
        env.operator.start()
        pid = env.operator.proc.pid
        spec = deep_merge(SPEC, {"optimization": {"partition": {"shards": 1}}})
        env.api.create(manifest(spec=spec))
        artifact = aid_of(spec)
        job = one_job(env, artifact)
        wait_for(lambda: env.status().get("phase") == "Optimizing", "phase Optimizing")

        # The API server goes away; meanwhile the Job finishes (the cluster keeps working).
        proxy.down()
        finish_job(env.api, NS, job["metadata"]["name"], summary(artifact))
        # Every watch stream (8 kinds) turned away four times: kopf backs off 1, 2, 4 s.
        wait_for(lambda: proxy.refused >= 32, "the operator trying to reconnect", timeout=120)
        assert env.operator.proc.poll() is None, env.operator.log()
        proxy.up()

        # Back: the operator picks up where it was, in the same process.
        shards_serving(env, artifact, 1)
        available(env)
        status = ready(env, 1)
        assert status["deployedArtifactId"] == artifact
        assert env.operator.proc.poll() is None and env.operator.proc.pid == pid
        assert [j["metadata"]["uid"] for j in env.jobs()] == [job["metadata"]["uid"]]
        for kind, name in [
            ("Job", job["metadata"]["name"]),
            ("Deployment", f"{NAME}-shard-0"),
            ("Service", f"{NAME}-shard-0"),
        ]:
            assert env.adds(kind, name) == 1, (kind, name)

        # And it still reacts to changes made after the outage.
        env.api.patch(
            "AcceleratedModel", NS, NAME, {"spec": {"runtime": {"batching": {"enabled": True}}}}
        )
        wait_for(lambda: env.status().get("observedGeneration") == 2, "the change after the outage")
        assert env.operator.stop() in (0, -15)  # while the API is there to say goodbye to


def test_a_gate_the_data_cannot_resolve_reaches_status_and_a_warning_event(env: Env) -> None:
    env.operator.start()
    spec = ONE_SHARD
    env.api.create(manifest(spec=spec))
    artifact = aid_of(spec)
    job = one_job(env, artifact)
    gate = {
        "samples": 40,
        "confidence": 0.95,
        "accuracyDrop": {"value": 0.0, "low": -0.0657, "high": 0.0657},
        "resolved": False,
        "message": "accuracy drop 0.0000 (95 % CI -0.0657..0.0657) on 40 samples cannot "
        "resolve maxAccuracyDrop 0.01; about 276 samples at the observed rates would",
    }
    finish_job(
        env.api,
        NS,
        job["metadata"]["name"],
        json.dumps({**json.loads(summary(artifact)), "gate": gate}),
    )
    shards_serving(env, artifact, 1)
    wait_for(lambda: "AccuracyUnresolved" in env.event_reasons(), "the AccuracyUnresolved Warning")
    event = next(
        e
        for e in env.api.list("Event", NS)
        if e["reason"] == "AccuracyUnresolved" and e["involvedObject"]["name"] == NAME
    )
    assert event["type"] == "Warning" and "about 276 samples" in event["message"]
    status = env.status()
    assert status["optimization"]["gate"] == gate
    assert "NOT resolved by the validation data" in env.condition("Optimized")["message"]
    available(env)
    ready(env, 1)
    assert env.event_reasons().count("AccuracyUnresolved") == 1
