"""reconcile() as table-driven cases: what to apply, what to delete, status and Events."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubeaccel_api.target import GPU_PRODUCT_LABEL as GPU_PRODUCT
from kubeaccel_api.v1alpha1 import AcceleratedModel, AcceleratedModelStatus
from kubeaccel_operator.errors import InvalidSpec
from kubeaccel_operator.manifests.common import job_name
from kubeaccel_operator.manifests.configmap import build_spec_configmap
from kubeaccel_operator.manifests.deployment import build_deployment
from kubeaccel_operator.manifests.job import build_job
from kubeaccel_operator.manifests.pdb import build_pdb
from kubeaccel_operator.manifests.pvc import build_artifacts_pvc
from kubeaccel_operator.manifests.service import build_main_service, build_shard_service
from kubeaccel_operator.pods import Termination
from kubeaccel_operator.reconcile import (
    Observed,
    Plan,
    invalid_status,
    parse_summary,
    reconcile,
)
from kubeaccel_operator.settings import Settings
from operator_samples import (
    GPU2,
    NAME,
    NOW,
    NS,
    aid,
    deployment_available,
    job_complete,
    job_failed,
    job_running,
    live,
    model,
    observed,
    shard_pod,
    summary,
)

CFG = Settings()
OPT2 = {**GPU2, "optimization": {"partition": {"shards": 2}, "quantization": {"mode": "auto"}}}


def serving(
    spec: dict[str, Any], *, available: bool = True, artifact: str | None = None
) -> list[dict[str, Any]]:
    """Every child of a resource that is deployed (and, by default, fully available)."""
    res = model(spec)
    artifact = artifact or aid(spec)
    objs: list[dict[str, Any]] = [live(build_spec_configmap(res)), live(build_main_service(res))]
    pvc = build_artifacts_pvc(res)
    if pvc:
        objs.append(live(pvc))
    for i in range(res.spec.optimization.partition.shards):
        deployment = build_deployment(res, i, artifact, CFG)
        objs.append(deployment_available(deployment) if available else live(deployment))
        objs.append(live(build_shard_service(res, i)))
        pdb = build_pdb(res, i)
        if pdb:
            objs.append(live(pdb))
    return objs


def ready_status(spec: dict[str, Any]) -> AcceleratedModelStatus:
    """The status reconcile writes once `spec` is Ready."""
    plan = reconcile(model(spec), observed(*serving(spec)), CFG, NOW)
    assert plan.status.phase.value == "Ready"
    return reconcile(model(spec, status=plan.status), observed(*serving(spec)), CFG, NOW).status


@dataclass
class Case:
    """One reconcile situation and what must come out of it."""

    res: AcceleratedModel
    seen: Observed
    phase: str
    conditions: dict[str, tuple[str, str]]  # type -> (status, reason)
    applies: set[str]  # Kind/name of desired objects
    deletes: set[str] = field(default_factory=set)
    events: list[str] = field(default_factory=list)  # "Type/Reason"
    check: Callable[[Plan], None] | None = None


def case_new_resource() -> Case:
    artifact = aid(GPU2)
    return Case(
        res=model(GPU2),
        seen=observed(),
        phase="Optimizing",
        conditions={
            "Validated": ("True", "Valid"),
            "Optimized": ("Unknown", "JobCreated"),
            "Deployed": ("Unknown", "WaitingForArtifact"),
            "Ready": ("Unknown", "JobCreated"),
        },
        applies={
            "ConfigMap/mnist-spec",
            "PersistentVolumeClaim/mnist-artifacts",
            f"Job/{job_name(NAME, artifact)}",
        },
        events=["Normal/Optimizing"],
    )


def case_job_running() -> Case:
    res = model(GPU2)
    artifact = aid(GPU2)
    first = reconcile(res, observed(), CFG, NOW).status
    job = job_running(build_job(res, artifact, CFG))
    return Case(
        res=model(GPU2, status=first),
        seen=observed(job, live(build_spec_configmap(res))),
        phase="Optimizing",
        conditions={"Optimized": ("Unknown", "JobRunning"), "Ready": ("Unknown", "JobRunning")},
        applies={
            "ConfigMap/mnist-spec",
            "PersistentVolumeClaim/mnist-artifacts",
            f"Job/{job['metadata']['name']}",
        },
        events=[],
    )


def case_job_failed() -> Case:
    res = model(GPU2)
    job = job_failed(build_job(res, aid(GPU2), CFG))
    message = (
        "\n".join(f"log line {i}" for i in range(30)) + "\nRuntimeError: accuracy budget exceeded"
    )

    def check(plan: Plan) -> None:
        optimized = next(c for c in plan.status.conditions if c.type.value == "Optimized")
        assert optimized.message.startswith(
            f"Job {job['metadata']['name']} failed (BackoffLimitExceeded)"
        )
        assert optimized.message.endswith("RuntimeError: accuracy budget exceeded")
        assert "log line 19" not in optimized.message  # only the last lines
        assert plan.status.endpoint is None

    return Case(
        res=res,
        seen=observed(job, messages={job["metadata"]["name"]: message}),
        phase="Failed",
        conditions={
            "Optimized": ("False", "BackoffLimitExceeded"),
            "Deployed": ("False", "NoArtifact"),
            "Ready": ("False", "BackoffLimitExceeded"),
        },
        applies={"ConfigMap/mnist-spec", "PersistentVolumeClaim/mnist-artifacts"},
        events=["Warning/BackoffLimitExceeded"],
        check=check,
    )


def case_failure_recorded_and_job_gone() -> Case:
    res = model(GPU2)
    job = job_failed(build_job(res, aid(GPU2), CFG))
    failed = reconcile(
        res, observed(job, messages={job["metadata"]["name"]: '{"error": "boom"}'}), CFG, NOW
    )
    return Case(
        res=model(GPU2, status=failed.status),
        seen=observed(),  # the TTL controller removed the Job
        phase="Failed",
        conditions={"Optimized": ("False", "BackoffLimitExceeded")},
        applies={"ConfigMap/mnist-spec", "PersistentVolumeClaim/mnist-artifacts"},  # no new Job
        events=[],
    )


def case_failure_recorded_and_job_still_there() -> Case:
    res = model(GPU2)
    job = job_failed(build_job(res, aid(GPU2), CFG))
    seen = observed(job, messages={job["metadata"]["name"]: '{"error": "boom"}'})
    failed = reconcile(res, seen, CFG, NOW)

    def check(plan: Plan) -> None:
        optimized = next(c for c in plan.status.conditions if c.type.value == "Optimized")
        assert optimized.message.endswith("boom")  # the pod's message is not read again

    return Case(
        res=model(GPU2, status=failed.status),
        seen=observed(job),  # kube.observe skips the pods once the failure is recorded
        phase="Failed",
        conditions={"Optimized": ("False", "BackoffLimitExceeded")},
        applies={"ConfigMap/mnist-spec", "PersistentVolumeClaim/mnist-artifacts"},
        events=[],
        check=check,
    )


def case_job_done() -> Case:
    res = model(GPU2)
    artifact = aid(GPU2)
    job = job_complete(build_job(res, artifact, CFG))

    def check(plan: Plan) -> None:
        assert plan.status.optimization is not None
        assert plan.status.optimization.speedup == 2.0
        assert plan.status.optimization.artifact_id == artifact
        assert plan.status.ready_shards == "0/2"
        assert plan.status.endpoint == f"http://{NAME}.{NS}.svc:8080/v2/models/{NAME}"
        assert plan.status.deployed_artifact_id == artifact

    return Case(
        res=model(GPU2, status=reconcile(res, observed(), CFG, NOW).status),
        seen=observed(job, messages={job["metadata"]["name"]: summary(artifact)}),
        phase="Deploying",
        conditions={
            "Optimized": ("True", "Optimized"),
            "Deployed": ("True", "ShardsDeployed"),
            "Ready": ("False", "ShardsUnavailable"),
        },
        applies={
            "ConfigMap/mnist-spec",
            "PersistentVolumeClaim/mnist-artifacts",
            "Service/mnist",
            "Service/mnist-shard-0",
            "Service/mnist-shard-1",
            "Deployment/mnist-shard-0",
            "Deployment/mnist-shard-1",
            "PodDisruptionBudget/mnist-shard-0",
            "PodDisruptionBudget/mnist-shard-1",
        },
        events=["Normal/Optimized", "Normal/Deploying"],
        check=check,
    )


UNRESOLVED_GATE = {
    "samples": 64,
    "accuracyDrop": {"value": 0.0, "low": -0.042, "high": 0.042},
    "resolved": False,
    "message": "accuracy drop 0.0000 (95 % CI -0.0420..0.0420) on 64 samples cannot resolve "
    "maxAccuracyDrop 0.01; about 276 samples at the observed rates would",
}


def case_job_done_with_an_unresolved_gate() -> Case:
    res = model(GPU2)
    artifact = aid(GPU2)
    job = job_complete(build_job(res, artifact, CFG))
    message = json.dumps({**json.loads(summary(artifact)), "gate": UNRESOLVED_GATE})

    def check(plan: Plan) -> None:
        gate = plan.status.optimization.gate if plan.status.optimization else None
        assert gate is not None and gate.resolved is False and gate.samples == 64
        assert gate.accuracy_drop is not None and gate.accuracy_drop.high == 0.042
        optimized = next(c for c in plan.status.conditions if c.type.value == "Optimized")
        assert "NOT resolved by the validation data" in optimized.message
        assert "about 276 samples" in optimized.message
        warning = next(e for e in plan.events if e.reason == "AccuracyUnresolved")
        assert warning.type == "Warning" and "64 validation samples" in warning.message
        assert "about 276 samples" in warning.message

    return Case(
        res=model(GPU2, status=reconcile(res, observed(), CFG, NOW).status),
        seen=observed(job, messages={job["metadata"]["name"]: message}),
        phase="Deploying",
        conditions={"Optimized": ("True", "Optimized"), "Deployed": ("True", "ShardsDeployed")},
        applies=case_job_done().applies,
        events=["Warning/AccuracyUnresolved", "Normal/Optimized", "Normal/Deploying"],
        check=check,
    )


def case_job_done_with_unreadable_summary() -> Case:
    res = model()
    job = job_complete(build_job(res, aid(), CFG))

    def check(plan: Plan) -> None:
        assert plan.status.optimization is not None
        assert plan.status.optimization.artifact_id == aid()
        assert plan.status.optimization.speedup is None

    return Case(
        res=res,
        seen=observed(job, messages={job["metadata"]["name"]: "Traceback: not json"}),
        phase="Deploying",
        conditions={"Optimized": ("True", "Optimized")},
        applies={
            "ConfigMap/mnist-spec",
            "PersistentVolumeClaim/mnist-artifacts",
            "Service/mnist",
            "Service/mnist-shard-0",
            "Deployment/mnist-shard-0",
        },
        events=["Warning/SummaryUnreadable", "Normal/Optimized", "Normal/Deploying"],
        check=check,
    )


def case_all_shards_available() -> Case:
    res = model(GPU2)
    artifact = aid(GPU2)
    job = job_complete(build_job(res, artifact, CFG))
    deploying = reconcile(
        res, observed(job, messages={job["metadata"]["name"]: summary(artifact)}), CFG, NOW
    )
    return Case(
        res=model(GPU2, status=deploying.status),
        seen=observed(job, *serving(GPU2)),
        phase="Ready",
        conditions={"Ready": ("True", "AllShardsAvailable")},
        applies={o["kind"] + "/" + o["metadata"]["name"] for o in deploying.objects},
        events=["Normal/Ready"],
        check=lambda plan: _assert(plan.status.ready_shards == "2/2"),
    )


def case_old_pods_left_mid_rollout_are_not_ready_yet() -> Case:
    """Every new pod created, 2 of 2 available, but one of those is an old-template pod
    and a new one still starts: not rolled out (was reported Ready on a real cluster)."""
    res = model(GPU2)
    artifact = aid(GPU2)
    job = job_complete(build_job(res, artifact, CFG))
    deploying = reconcile(
        res, observed(job, messages={job["metadata"]["name"]: summary(artifact)}), CFG, NOW
    )
    objs = serving(GPU2)
    for obj in objs:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "mnist-shard-1":
            obj["status"]["replicas"] = obj["spec"]["replicas"] + 1
    return Case(
        res=model(GPU2, status=deploying.status),
        seen=observed(job, *objs),
        phase="Deploying",
        conditions={"Ready": ("False", "ShardsUnavailable")},
        applies={o["kind"] + "/" + o["metadata"]["name"] for o in deploying.objects},
        events=[],
        check=lambda plan: _assert(plan.status.ready_shards == "1/2"),
    )


def case_shard_loses_availability() -> Case:
    objs = serving(GPU2)
    for obj in objs:
        if obj["metadata"]["name"] == "mnist-shard-1" and obj["kind"] == "Deployment":
            obj["status"]["availableReplicas"] = 1
    return Case(
        res=model(GPU2, status=ready_status(GPU2)),
        seen=observed(*objs),
        phase="Degraded",
        conditions={"Ready": ("False", "ShardsUnavailable")},
        applies={o["kind"] + "/" + o["metadata"]["name"] for o in serving(GPU2)},
        events=["Warning/Degraded"],
        check=lambda plan: _assert(plan.status.ready_shards == "1/2"),
    )


def case_shards_report_the_provider_they_got() -> Case:
    providers = {
        "mnist-shard-0": ("CPUExecutionProvider",),
        "mnist-shard-1": ("CPUExecutionProvider", "CUDAExecutionProvider"),
    }

    def check(plan: Plan) -> None:
        got = {s.deployment: s.execution_provider for s in plan.status.shards or []}
        _assert(
            got
            == {
                "mnist-shard-0": "CPUExecutionProvider",
                "mnist-shard-1": "CPUExecutionProvider, CUDAExecutionProvider",
            }
        )

    return Case(
        res=model(GPU2, status=ready_status(GPU2)),
        seen=observed(*serving(GPU2), providers=providers),
        phase="Ready",
        conditions={"Ready": ("True", "AllShardsAvailable")},
        applies={o["kind"] + "/" + o["metadata"]["name"] for o in serving(GPU2)},
        check=check,
    )


def case_runtime_only_update() -> Case:
    changed = {**GPU2, "runtime": {**GPU2["runtime"], "replicas": 3, "batching": {"enabled": True}}}
    assert aid(changed) == aid(GPU2)

    def check(plan: Plan) -> None:
        deployments = [o for o in plan.objects if o["kind"] == "Deployment"]
        assert {d["spec"]["replicas"] for d in deployments} == {3}
        assert not [o for o in plan.objects if o["kind"] == "Job"]

    return Case(
        res=model(changed, status=ready_status(GPU2), generation=2),
        seen=observed(*serving(GPU2)),
        phase="Deploying",
        conditions={"Optimized": ("True", "Optimized"), "Ready": ("False", "ShardsUnavailable")},
        applies={o["kind"] + "/" + o["metadata"]["name"] for o in serving(GPU2)},
        events=["Normal/Deploying"],
        check=check,
    )


def case_optimization_update_keeps_old_shards_serving() -> Case:
    old_artifact, new_artifact = aid(GPU2), aid(OPT2)
    assert old_artifact != new_artifact
    old_job = job_complete(build_job(model(GPU2), old_artifact, CFG))

    def check(plan: Plan) -> None:
        assert plan.status.deployed_artifact_id == old_artifact
        assert plan.status.artifact_id == new_artifact
        assert plan.status.endpoint is not None
        assert plan.status.ready_shards == "2/2"

    return Case(
        res=model(OPT2, status=ready_status(GPU2), generation=2),
        seen=observed(old_job, *serving(GPU2)),
        phase="Optimizing",
        conditions={
            "Optimized": ("Unknown", "JobCreated"),
            "Deployed": ("Unknown", "ServingPreviousArtifact"),
        },
        applies={
            "ConfigMap/mnist-spec",
            "PersistentVolumeClaim/mnist-artifacts",
            f"Job/{job_name(NAME, new_artifact)}",
        },
        deletes={f"Job/{old_job['metadata']['name']}"},  # superseded; nothing else is touched
        events=["Normal/Optimizing"],
        check=check,
    )


def case_failed_reoptimization_keeps_old_shards() -> Case:
    new_job = job_failed(build_job(model(OPT2), aid(OPT2), CFG), reason="DeadlineExceeded")
    return Case(
        res=model(OPT2, status=ready_status(GPU2), generation=2),
        seen=observed(new_job, *serving(GPU2)),
        phase="Failed",
        conditions={
            "Optimized": ("False", "DeadlineExceeded"),
            "Deployed": ("False", "ServingPreviousArtifact"),
        },
        applies={"ConfigMap/mnist-spec", "PersistentVolumeClaim/mnist-artifacts"},
        events=["Warning/DeadlineExceeded"],
    )


def case_shard_count_change_removes_the_extra_shard() -> Case:
    one = {**GPU2, "optimization": {"partition": {"shards": 1}, "quantization": {"mode": "fp16"}}}
    job = job_complete(build_job(model(one), aid(one), CFG))
    return Case(
        res=model(one, status=ready_status(GPU2), generation=2),
        seen=observed(job, *serving(GPU2), messages={job["metadata"]["name"]: summary(aid(one))}),
        phase="Deploying",
        conditions={"Optimized": ("True", "Optimized")},
        applies={
            "ConfigMap/mnist-spec",
            "PersistentVolumeClaim/mnist-artifacts",
            "Service/mnist",
            "Service/mnist-shard-0",
            "Deployment/mnist-shard-0",
            "PodDisruptionBudget/mnist-shard-0",
        },
        deletes={
            "Service/mnist-shard-1",
            "Deployment/mnist-shard-1",
            "PodDisruptionBudget/mnist-shard-1",
        },
        events=["Normal/Optimized", "Normal/Deploying"],
    )


def case_child_deleted_by_hand() -> Case:
    objs = [
        o
        for o in serving(GPU2)
        if not (o["kind"] == "Deployment" and o["metadata"]["name"] == "mnist-shard-1")
    ]
    objs = [o for o in objs if not (o["kind"] == "Service" and o["metadata"]["name"] == "mnist")]
    return Case(
        res=model(GPU2, status=ready_status(GPU2)),
        seen=observed(*objs),
        phase="Degraded",
        conditions={"Ready": ("False", "ShardsUnavailable")},
        applies={o["kind"] + "/" + o["metadata"]["name"] for o in serving(GPU2)},  # both restored
        events=["Warning/Degraded"],
    )


def case_missing_claim_waits() -> Case:
    spec = {"storage": {"pvc": {"claimName": "shared"}}}
    return Case(
        res=model(spec),
        seen=observed(claim_present=False),
        phase="Optimizing",
        conditions={"Optimized": ("Unknown", "ClaimNotFound")},
        applies={"ConfigMap/mnist-spec"},
        events=["Warning/ClaimNotFound"],
        check=lambda plan: _assert(plan.waiting is not None and "shared" in plan.waiting),
    )


def case_cpu_model_moved_to_a_gpu_reoptimizes_on_the_gpu() -> Case:
    cpu = {"runtime": {"executionProvider": "auto"}}
    gpu = {"runtime": {"executionProvider": "auto", "resources": {"gpus": 1}}}
    new_artifact = aid(gpu)
    assert new_artifact != aid(cpu)

    def check(plan: Plan) -> None:
        [job] = [o for o in plan.objects if o["kind"] == "Job"]
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == CFG.gpu_runtime_image
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert plan.status.deployed_artifact_id == aid(cpu)  # the CPU shards keep serving

    return Case(
        res=model(gpu, status=ready_status(cpu), generation=2),
        seen=observed(*serving(cpu)),
        phase="Optimizing",
        conditions={
            "Optimized": ("Unknown", "JobCreated"),
            "Deployed": ("Unknown", "ServingPreviousArtifact"),
        },
        applies={
            "ConfigMap/mnist-spec",
            "PersistentVolumeClaim/mnist-artifacts",
            f"Job/{job_name(NAME, new_artifact)}",
        },
        events=["Normal/Optimizing"],
        check=check,
    )


def _on_product(product: str) -> dict[str, Any]:
    return {**GPU2, "runtime": {**GPU2["runtime"], "nodeSelector": {GPU_PRODUCT: product}}}


def case_gpu_product_change_reoptimizes_for_the_new_gpu() -> Case:
    h100, h200 = _on_product("NVIDIA-H100"), _on_product("NVIDIA-H200")
    assert aid(h100) != aid(h200)

    def check(plan: Plan) -> None:
        [job] = [o for o in plan.objects if o["kind"] == "Job"]
        assert job["spec"]["template"]["spec"]["nodeSelector"] == {GPU_PRODUCT: "NVIDIA-H200"}

    return Case(
        res=model(h200, status=ready_status(h100), generation=2),
        seen=observed(*serving(h100)),
        phase="Optimizing",
        conditions={"Deployed": ("Unknown", "ServingPreviousArtifact")},
        applies={
            "ConfigMap/mnist-spec",
            "PersistentVolumeClaim/mnist-artifacts",
            f"Job/{job_name(NAME, aid(h200))}",
        },
        events=["Normal/Optimizing"],
        check=check,
    )


def case_gpu_placement_change_only_rolls_the_shards() -> Case:
    tolerant = {
        **GPU2,
        "runtime": {
            **GPU2["runtime"],
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    assert aid(tolerant) == aid(GPU2)
    return Case(
        res=model(tolerant, status=ready_status(GPU2), generation=2),
        seen=observed(*serving(GPU2)),
        phase="Deploying",
        conditions={"Optimized": ("True", "Optimized")},
        applies={o["kind"] + "/" + o["metadata"]["name"] for o in serving(GPU2)},
        events=["Normal/Deploying"],
        check=lambda plan: _assert(not [o for o in plan.objects if o["kind"] == "Job"]),
    )


def deploying_status(spec: dict[str, Any]) -> AcceleratedModelStatus:
    """The status reconcile writes once the Job of `spec` succeeded (phase Deploying)."""
    res, artifact = model(spec), aid(spec)
    job = job_complete(build_job(res, artifact, CFG))
    seen = observed(job, messages={job["metadata"]["name"]: summary(artifact)})
    status = reconcile(res, seen, CFG, NOW).status
    assert status.phase.value == "Deploying"
    return status


def first_deployment(spec: dict[str, Any]) -> dict[str, Any]:
    """The desired Deployment of shard 0."""
    return build_deployment(model(spec), 0, aid(spec), CFG)


def serving_names(spec: dict[str, Any]) -> set[str]:
    return {o["kind"] + "/" + o["metadata"]["name"] for o in serving(spec)}


def crashed(message: str, code: int = 1, reason: str = "Error") -> dict[str, Any]:
    """A kubelet terminated record."""
    return {
        "exitCode": code,
        "reason": reason,
        "message": message,
        "finishedAt": "2025-01-02T03:04:50Z",
    }


def deploying_with(
    pod: dict[str, Any], phase: str, reason: str, check: Callable[[Plan], None] | None = None
) -> Case:
    """GPU2 just deployed (shards not available yet), one shard-0 pod as given."""
    return Case(
        res=model(GPU2, status=deploying_status(GPU2)),
        seen=observed(*serving(GPU2, available=False), pod),
        phase=phase,
        conditions={
            "Optimized": ("True", "Optimized"),
            "Deployed": ("True", "ShardsDeployed"),
            "Ready": ("False", reason),
        },
        applies=serving_names(GPU2),
        events=[f"Warning/{reason}"],
        check=check,
    )


CUDA_MISSING = (
    '{"error": "shard 0: executionProvider cuda requires CUDAExecutionProvider, but this '
    'onnxruntime offers only CPUExecutionProvider", "reason": "ProviderUnavailable"}'
)


def case_a_shard_that_crash_loops_fails_the_resource_with_its_last_words() -> Case:
    pod = shard_pod(
        first_deployment(GPU2),
        waiting=("CrashLoopBackOff", "back-off 20s restarting failed container=runtime"),
        last_terminated=crashed(CUDA_MISSING),
    )

    def check(plan: Plan) -> None:
        ready = next(c for c in plan.status.conditions if c.type.value == "Ready")
        assert ready.message == (
            f"shard 0 (pod {pod['metadata']['name']}): container runtime exited with code 1: "
            "shard 0: executionProvider cuda requires CUDAExecutionProvider, but this "
            "onnxruntime offers only CPUExecutionProvider"
        )
        assert plan.events[0].message == ready.message == plan.status.message
        assert plan.status.deployed_artifact_id == aid(GPU2)  # nothing else changes

    return deploying_with(pod, "Failed", "ProviderUnavailable", check)


def case_an_image_that_cannot_be_pulled_fails_the_resource() -> Case:
    error = (
        'failed to pull and unpack image "docker.io/kubeaccel/runtime:nope": '
        "failed to resolve reference: not found"
    )
    pod = shard_pod(first_deployment(GPU2), waiting=("ErrImagePull", error))

    def check(plan: Plan) -> None:
        assert plan.status.message is not None and error in plan.status.message
        assert "cannot pull image ghcr.io/kubeaccel/runtime" in plan.status.message

    return deploying_with(pod, "Failed", "ImagePullFailed", check)


def case_a_shard_killed_for_memory_names_the_limit_to_raise() -> Case:
    pod = shard_pod(
        first_deployment(GPU2),
        waiting=("CrashLoopBackOff", "back-off"),
        last_terminated=crashed("", code=137, reason="OOMKilled"),
    )

    def check(plan: Plan) -> None:
        assert plan.status.message is not None
        assert "OOMKilled at its limit of 8Gi" in plan.status.message
        assert "raise spec.runtime.resources.memory" in plan.status.message

    return deploying_with(pod, "Failed", "OOMKilled", check)


def case_a_shard_that_does_not_fit_on_a_node_keeps_deploying_and_says_why() -> Case:
    why = "0/1 nodes are available: 1 Insufficient cpu."
    pod = shard_pod(first_deployment(GPU2), unschedulable=why)
    # Capacity may free up: still Deploying, not a failure.
    return deploying_with(
        pod, "Deploying", "Unschedulable", lambda plan: _assert(why in (plan.status.message or ""))
    )


def case_a_tampered_artifact_takes_a_ready_resource_down_with_the_reason() -> Case:
    tampered = (
        '{"error": "shard 0: /artifacts/mnist/x/shard-0.onnx: sha256 mismatch (manifest a, '
        'file b); the artifact was modified or corrupted", "reason": "ArtifactInvalid"}'
    )
    objs = serving(GPU2)
    for obj in objs:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "mnist-shard-0":
            obj["status"]["availableReplicas"] = obj["status"]["readyReplicas"] = 0
    pods = [
        shard_pod(first_deployment(GPU2), suffix, last_terminated=crashed(tampered))
        for suffix in ("aaaaa", "bbbbb")
    ]

    def check(plan: Plan) -> None:
        ready = next(c for c in plan.status.conditions if c.type.value == "Ready")
        assert "sha256 mismatch" in ready.message and ready.message.startswith("shard 0 (pod ")
        assert plan.status.ready_shards == "1/2"

    return Case(
        res=model(GPU2, status=ready_status(GPU2)),
        seen=observed(*objs, *pods),
        phase="Degraded",
        conditions={"Ready": ("False", "ArtifactInvalid")},
        applies=serving_names(GPU2),
        events=["Warning/ArtifactInvalid", "Warning/Degraded"],
        check=check,
    )


def case_a_crashed_pod_of_the_previous_template_says_nothing_about_the_new_one() -> Case:
    changed = {**GPU2, "runtime": {**GPU2["runtime"], "batching": {"enabled": True}}}
    old_pod = shard_pod(
        first_deployment(GPU2), waiting=("CrashLoopBackOff", "x"), last_terminated=crashed("x")
    )
    return Case(
        res=model(changed, status=ready_status(GPU2), generation=2),
        seen=observed(*serving(GPU2), old_pod),
        phase="Deploying",
        conditions={"Ready": ("False", "ShardsUnavailable")},
        applies=serving_names(GPU2),
        events=["Normal/Deploying"],
    )


def case_a_crashed_replica_of_an_available_shard_changes_nothing() -> Case:
    pod = shard_pod(
        first_deployment(GPU2), waiting=("CrashLoopBackOff", "x"), last_terminated=crashed("x")
    )
    return Case(
        res=model(GPU2, status=ready_status(GPU2)),
        seen=observed(*serving(GPU2), pod),
        phase="Ready",
        conditions={"Ready": ("True", "AllShardsAvailable")},
        applies=serving_names(GPU2),
        events=[],
    )


def case_an_optimizer_out_of_memory_names_the_setting_and_keeps_the_old_shards() -> Case:
    new_job = job_failed(build_job(model(OPT2), aid(OPT2), CFG))
    name = new_job["metadata"]["name"]
    oom = Termination(exit_code=137, reason="OOMKilled", finished_at="2025-01-02T03:04:05Z")

    def check(plan: Plan) -> None:
        optimized = next(c for c in plan.status.conditions if c.type.value == "Optimized")
        assert optimized.message == (
            f"Job {name} failed: the optimizer ran out of memory (OOMKilled at its limit 2Gi); "
            "raise the optimizer's memory: operator setting KUBEACCEL_OPTIMIZER_MEMORY "
            "(Helm value optimizer.memory)"
        )
        assert plan.status.deployed_artifact_id == aid(GPU2)
        assert plan.status.endpoint is not None

    return Case(
        res=model(OPT2, status=ready_status(GPU2), generation=2),
        seen=observed(new_job, *serving(GPU2), terminations={name: oom}),
        phase="Failed",
        conditions={
            "Optimized": ("False", "OOMKilled"),
            "Deployed": ("False", "ServingPreviousArtifact"),
            "Ready": ("False", "OOMKilled"),
        },
        applies={"ConfigMap/mnist-spec", "PersistentVolumeClaim/mnist-artifacts"},
        events=["Warning/OOMKilled"],
        check=check,
    )


def case_an_optimizer_pod_killed_until_the_job_gives_up_says_it_was_killed() -> Case:
    job = job_failed(build_job(model(GPU2), aid(GPU2), CFG))
    name = job["metadata"]["name"]
    killed = Termination(exit_code=137, reason="Error", finished_at="2025-01-02T03:04:05Z")

    def check(plan: Plan) -> None:
        optimized = next(c for c in plan.status.conditions if c.type.value == "Optimized")
        assert optimized.message == (
            f"Job {name} failed (BackoffLimitExceeded): Job has reached the specified backoff "
            "limit\nthe optimizer was killed (exit code 137, SIGKILL): it was stopped from outside"
        )

    return Case(
        res=model(GPU2),
        seen=observed(job, terminations={name: killed}),
        phase="Failed",
        conditions={"Optimized": ("False", "BackoffLimitExceeded")},
        applies={"ConfigMap/mnist-spec", "PersistentVolumeClaim/mnist-artifacts"},
        events=["Warning/BackoffLimitExceeded"],
        check=check,
    )


def case_an_optimizer_past_its_deadline_names_the_setting() -> Case:
    job = job_failed(build_job(model(GPU2), aid(GPU2), CFG), reason="DeadlineExceeded")

    def check(plan: Plan) -> None:
        optimized = next(c for c in plan.status.conditions if c.type.value == "Optimized")
        assert "longer than 3600 s" in optimized.message
        assert "KUBEACCEL_JOB_DEADLINE_SECONDS (Helm value optimizer.deadlineSeconds)" in (
            optimized.message
        )

    return Case(
        res=model(GPU2),
        seen=observed(job),
        phase="Failed",
        conditions={"Optimized": ("False", "DeadlineExceeded")},
        applies={"ConfigMap/mnist-spec", "PersistentVolumeClaim/mnist-artifacts"},
        events=["Warning/DeadlineExceeded"],
        check=check,
    )


def _assert(condition: bool) -> None:
    assert condition


CASES = {
    "new resource": case_new_resource,
    "job running": case_job_running,
    "job failed": case_job_failed,
    "failure recorded, job gone": case_failure_recorded_and_job_gone,
    "failure recorded, job still there": case_failure_recorded_and_job_still_there,
    "job done": case_job_done,
    "job done, unreadable summary": case_job_done_with_unreadable_summary,
    "job done, gate unresolved": case_job_done_with_an_unresolved_gate,
    "all shards available": case_all_shards_available,
    "old pods left mid-rollout": case_old_pods_left_mid_rollout_are_not_ready_yet,
    "shard loses availability": case_shard_loses_availability,
    "shards report the provider they got": case_shards_report_the_provider_they_got,
    "runtime-only update": case_runtime_only_update,
    "optimization update": case_optimization_update_keeps_old_shards_serving,
    "failed re-optimization": case_failed_reoptimization_keeps_old_shards,
    "shard count change": case_shard_count_change_removes_the_extra_shard,
    "child deleted": case_child_deleted_by_hand,
    "missing claim": case_missing_claim_waits,
    "cpu model moved to a gpu": case_cpu_model_moved_to_a_gpu_reoptimizes_on_the_gpu,
    "gpu product change": case_gpu_product_change_reoptimizes_for_the_new_gpu,
    "gpu placement change": case_gpu_placement_change_only_rolls_the_shards,
    "shard crash loop": case_a_shard_that_crash_loops_fails_the_resource_with_its_last_words,
    "shard image pull": case_an_image_that_cannot_be_pulled_fails_the_resource,
    "shard OOMKilled": case_a_shard_killed_for_memory_names_the_limit_to_raise,
    "shard unschedulable": case_a_shard_that_does_not_fit_on_a_node_keeps_deploying_and_says_why,
    "artifact tampered": case_a_tampered_artifact_takes_a_ready_resource_down_with_the_reason,
    "old template crashed": case_a_crashed_pod_of_the_previous_template_says_nothing_about_the_new_one,
    "crashed replica, shard available": case_a_crashed_replica_of_an_available_shard_changes_nothing,
    "optimizer OOMKilled": case_an_optimizer_out_of_memory_names_the_setting_and_keeps_the_old_shards,
    "optimizer killed": case_an_optimizer_pod_killed_until_the_job_gives_up_says_it_was_killed,
    "optimizer deadline": case_an_optimizer_past_its_deadline_names_the_setting,
}


@pytest.mark.parametrize("name", list(CASES))
def test_reconcile_case(name: str) -> None:
    case = CASES[name]()
    plan = reconcile(case.res, case.seen, CFG, NOW)
    assert {f"{o['kind']}/{o['metadata']['name']}" for o in plan.objects} == case.applies
    assert {f"{k}/{n}" for k, n in plan.delete} == case.deletes
    assert plan.status.phase.value == case.phase
    got = {c.type.value: (c.status.value, c.reason) for c in plan.status.conditions}
    for ctype, expected in case.conditions.items():
        assert got[ctype] == expected, ctype
    assert [f"{e.type}/{e.reason}" for e in plan.events] == case.events
    assert plan.status.observed_generation == case.res.metadata.generation
    if case.check:
        case.check(plan)


@pytest.mark.parametrize("name", list(CASES))
def test_reconcile_twice_gives_the_same_plan_and_no_new_events(name: str) -> None:
    case = CASES[name]()
    first = reconcile(case.res, case.seen, CFG, NOW)
    again = reconcile(case.res.model_copy(update={"status": first.status}), case.seen, CFG, NOW)
    assert again.objects == first.objects
    assert again.delete == first.delete
    assert again.status == first.status
    assert [e for e in again.events if e.reason != "SummaryUnreadable"] == []


def test_condition_times_move_only_when_their_status_flips() -> None:
    first = reconcile(model(GPU2), observed(), CFG, NOW)
    later = reconcile(model(GPU2, status=first.status), observed(), CFG, NOW.replace(hour=9))
    times = {c.type: c.last_transition_time for c in later.status.conditions}
    assert all(t == NOW for t in times.values())


def test_objects_are_ordered_dependencies_first() -> None:
    plan = CASES["job done"]()
    kinds = [o["kind"] for o in reconcile(plan.res, plan.seen, CFG, NOW).objects]
    assert kinds == sorted(
        kinds,
        key=[
            "ConfigMap",
            "PersistentVolumeClaim",
            "Job",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ].index,
    )


def test_network_policies_come_with_the_shards_and_go_when_disabled() -> None:
    fenced = {**GPU2, "networkPolicy": {"enabled": True}}
    plan = reconcile(model(fenced, status=ready_status(GPU2)), observed(*serving(GPU2)), CFG, NOW)
    policies = {o["metadata"]["name"] for o in plan.objects if o["kind"] == "NetworkPolicy"}
    assert policies == {"mnist-shard-0", "mnist-shard-1"}
    assert plan.objects[-1]["kind"] == "NetworkPolicy"  # after the pods they fence
    live_policies = [o for o in plan.objects if o["kind"] == "NetworkPolicy"]
    # Turned off again: they are deleted; nothing rolls (the pod template is unchanged).
    again = reconcile(
        model(GPU2, status=plan.status), observed(*serving(GPU2), *live_policies), CFG, NOW
    )
    assert {f"{k}/{n}" for k, n in again.delete} == {
        "NetworkPolicy/mnist-shard-0",
        "NetworkPolicy/mnist-shard-1",
    }
    assert again.status.phase.value == "Ready"
    # The operator's default applies when the spec does not say.
    on_by_default = reconcile(
        model(GPU2, status=ready_status(GPU2)),
        observed(*serving(GPU2)),
        Settings(network_policy=True),
        NOW,
    )
    assert sum(o["kind"] == "NetworkPolicy" for o in on_by_default.objects) == 2


def test_s3_storage_optimizes_without_a_claim_and_serves_from_the_bucket() -> None:
    spec = {"storage": {"type": "s3", "s3": {"bucket": "models"}}}
    plan = reconcile(model(spec), observed(), CFG, NOW)
    kinds = [obj["kind"] for obj in plan.objects]
    assert "PersistentVolumeClaim" not in kinds and "Job" in kinds
    job = next(obj for obj in plan.objects if obj["kind"] == "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--publish", f"s3://models/kubeaccel/{model(spec).metadata.name}"]


def test_invalid_status_names_the_field_and_warns_once() -> None:
    error = InvalidSpec(["spec.runtime.replicas: Input should be greater than or equal to 0"])
    status, events = invalid_status(None, error, 3, NOW)
    assert status.phase.value == "Failed"
    assert status.observed_generation == 3
    conds = {c.type.value: c for c in status.conditions}
    assert conds["Validated"].status.value == "False"
    assert conds["Validated"].reason == "InvalidSpec"
    assert conds["Validated"].message == error.problems[0]
    assert conds["Ready"].reason == "InvalidSpec"
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]
    _, again = invalid_status(status, error, 3, NOW)
    assert again == ()


def test_invalid_status_keeps_what_the_running_shards_report() -> None:
    ready = ready_status(GPU2)
    status, _ = invalid_status(ready, InvalidSpec(["spec.x: bad"]), 2, NOW)
    assert status.endpoint == ready.endpoint
    assert status.deployed_artifact_id == ready.deployed_artifact_id


def test_parse_summary_reports_what_is_wrong_with_it() -> None:
    artifact = "0123456789abcdef"
    good, problem = parse_summary(summary(artifact), artifact)
    assert problem is None and good.speedup == 2.0
    wrong, problem = parse_summary(summary("ffffffffffffffff"), artifact)
    assert wrong.artifact_id == artifact and problem is not None and "expected" in problem
    bad, problem = parse_summary('{"artifactId": "x", "speedup": "fast"}', artifact)
    assert bad.artifact_id == artifact and problem is not None and "speedup" in problem
    extra, problem = parse_summary('{"artifactId": "0123456789abcdef", "newField": 1}', artifact)
    assert problem is None and extra.artifact_id == artifact


# --------------------------------------------------------------------------- written contract

# What the Job read from the model (sample bodies declare x: float32 [-1, 1, 28, 28]).
RECORDED = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
}


def _optimized(spec: dict[str, Any] | None = None, artifact: str | None = None) -> Any:
    return {
        "phase": "Ready",
        "optimization": {"artifactId": artifact or aid(spec), "contract": RECORDED},
    }


def test_a_written_contract_that_contradicts_the_recorded_one_is_an_invalid_spec() -> None:
    wrong = {"inputs": [{"name": "x", "dtype": "float16", "shape": [-1, 1, 28, 32]}]}
    with pytest.raises(InvalidSpec) as err:
        reconcile(model(wrong, status=_optimized(wrong)), observed(), CFG, NOW)
    assert err.value.reason == "ContractMismatch"
    assert err.value.problems == [
        "spec.inputs[0] (x): dtype float16, the model's is float32",
        "spec.inputs[0] (x): shape[3] is 32, the model fixes it to 28",
    ]


def test_a_contract_is_checked_only_against_its_own_artifacts_record() -> None:
    wrong = {"inputs": [{"name": "x", "dtype": "float16", "shape": [-1, 1, 28, 28]}]}
    # Another artifact (a new Job will check), no record, or no written contract: no verdict.
    reconcile(model(wrong, status=_optimized(artifact="0" * 16)), observed(), CFG, NOW)
    reconcile(model(wrong, status={"phase": "Ready"}), observed(), CFG, NOW)
    res = model(status=_optimized())
    unwritten = res.model_copy(update={"spec": res.spec.model_copy(update={"inputs": None})})
    reconcile(unwritten, observed(), CFG, NOW)
    reconcile(model(status=_optimized()), observed(), CFG, NOW)  # a matching one passes
