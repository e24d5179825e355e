"""The optimization Job: `kubeaccel optimize` writes one artifact into the artifacts volume.

With S3 storage the volume is the pod's own emptyDir and the Job publishes the artifact
to the bucket once it is complete (manifest last).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import (
    ARTIFACTS_ROOT,
    SOURCES_ROOT,
    SPEC_DIR,
    SPEC_FILE,
    Component,
    Manifest,
    artifacts_uri,
    artifacts_volume,
    container_security_context,
    job_name,
    labels,
    object_meta,
    pod_security_context,
    s3_env,
    source_claims,
    spec_configmap_name,
    tmp_volume,
    uses_s3,
)
from kubeaccel_operator.manifests.images import optimizer_image
from kubeaccel_operator.manifests.scheduling import (
    gpu_resource_name,
    optimizer_wants_gpu,
    placement,
)

if TYPE_CHECKING:
    from kubeaccel_operator.settings import Settings

CONTAINER = "optimize"


def _resources(res: AcceleratedModel, cfg: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": {"cpu": cfg.optimizer_cpu, "memory": cfg.optimizer_memory},
        "limits": {"memory": cfg.optimizer_memory},
    }
    if optimizer_wants_gpu(res):
        # Same GPU resource as the shards; one device is what one onnxruntime session
        # uses, so one is enough to measure candidates and build TensorRT engines.
        out["limits"][gpu_resource_name(res, cfg)] = "1"
    return out


def build_job(res: AcceleratedModel, artifact: str, cfg: Settings) -> Manifest:
    """Job `<name>-opt-<artifact[:10]>` running `kubeaccel optimize` for `artifact`."""
    name = res.metadata.name
    tmp, tmp_mount = tmp_volume()
    volumes: list[dict[str, Any]] = [
        artifacts_volume(res, read_only=False),
        {"name": "spec", "configMap": {"name": spec_configmap_name(name)}},
        tmp,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "artifacts", "mountPath": ARTIFACTS_ROOT},
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        tmp_mount,
    ]
    for i, claim in enumerate(source_claims(res)):
        volumes.append(
            {"name": f"source-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append(
            {"name": f"source-{i}", "mountPath": f"{SOURCES_ROOT}/{claim}", "readOnly": True}
        )
    args = ["optimize", "--spec", f"{SPEC_DIR}/{SPEC_FILE}", "--out", f"{ARTIFACTS_ROOT}/{name}"]
    if uses_s3(res):
        args += ["--publish", artifacts_uri(res)]
    container = {
        "name": CONTAINER,
        "image": optimizer_image(res, cfg),
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["kubeaccel"],
        "args": args,
        "env": [
            {"name": "KUBEACCEL_PVC_ROOT", "value": SOURCES_ROOT},
            {"name": "HOME", "value": "/tmp"},
            {"name": "TMPDIR", "value": "/tmp"},
            # The bucket's settings also serve s3:// model sources.
            *s3_env(res),
        ],
        "resources": _resources(res, cfg),
        "securityContext": container_security_context(),
        # The optimizer writes its compact JSON summary to /dev/termination-log; if it dies
        # before that, the log tail explains why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if optimizer_wants_gpu(res):
        # Land on the GPU class the shards will be served on (same nodeSelector,
        # tolerations, runtimeClassName and the user's affinity; not the shards' default
        # pod affinity, which is about spreading runtime replicas).
        pod_spec.update(placement(res, res.spec.runtime.affinity))
    job_labels = labels(res, Component.OPTIMIZER, artifact=artifact)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(res, job_name(name, artifact), job_labels),
        "spec": {
            "backoffLimit": cfg.job_backoff_limit,
            "activeDeadlineSeconds": cfg.job_deadline_seconds,
            "ttlSecondsAfterFinished": cfg.job_ttl_seconds,
            "template": {"metadata": {"labels": job_labels}, "spec": pod_spec},
        },
    }
