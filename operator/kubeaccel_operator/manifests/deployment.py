"""Shard Deployments: `kubeaccel serve` for one pipeline shard of one artifact.

The artifact is mounted read-only from the artifacts claim, or, with S3 storage, fetched
by an init container into the pod's own emptyDir (every SHA-256 checked) before serving.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from kubeaccel_api.constants import RUNTIME_PORT
from kubeaccel_api.routing import ROUTING_FILE
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import (
    ANNOTATION_SPEC_HASH,
    ARTIFACTS_ROOT,
    PORT_NAME,
    Chain,
    Manifest,
    artifacts_uri,
    artifacts_volume,
    container_port,
    container_security_context,
    labels,
    object_meta,
    parse_quantity,
    pod_security_context,
    routing_configmap_name,
    s3_env,
    selector_labels,
    serving_spec,
    shard_name,
    shard_url,
    stable_hash,
    tmp_volume,
    uses_s3,
)
from kubeaccel_operator.manifests.images import serving_image
from kubeaccel_operator.manifests.scheduling import default_affinity, placement, runtime_resources

if TYPE_CHECKING:
    from kubeaccel_operator.settings import Settings

CONTAINER = "runtime"
FETCH_CONTAINER = "fetch-artifact"
# Copying files needs little; the pod's request stays the runtime container's (init
# containers run first, so the larger of the two counts, not their sum).
FETCH_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
# `kubeaccel serve` drains for 5 s, then waits up to 30 s for in-flight requests.
GRACE_SECONDS = 45

LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
# Mounted as a directory (not subPath), so the kubelet's ConfigMap updates reach the pod.
ROUTING_DIR = "/etc/kubeaccel/routing"


def artifact_dir(res: AcceleratedModel, artifact: str) -> str:
    """Where the artifact lives inside the volume and inside the pod."""
    return f"{ARTIFACTS_ROOT}/{res.metadata.name}/{artifact}"


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def serve_args(
    res: AcceleratedModel, index: int, artifact: str, chain: Chain = Chain.A
) -> list[str]:
    """Arguments of `kubeaccel serve` for shard `index` of `chain`."""
    args = [
        "serve",
        "--artifacts",
        artifact_dir(res, artifact),
        "--shard",
        str(index),
        "--port",
        str(RUNTIME_PORT),
        "--host",
        "0.0.0.0",
    ]
    if index + 1 < res.spec.optimization.partition.shards:
        args += ["--next", shard_url(res, index + 1, chain)]
    cores = parse_quantity(res.spec.runtime.resources.cpu or "")
    if cores is not None:
        # CPU is requested, not limited, so the server cannot read a cgroup limit: size
        # onnxruntime's threads to the request instead of every core of the node.
        args += ["--threads", str(max(1, math.ceil(cores)))]
    return args


def fetch_container(res: AcceleratedModel, artifact: str, image: str, cfg: Settings) -> Manifest:
    """Init container: `kubeaccel fetch-artifact` from the bucket into the artifacts emptyDir."""
    return {
        "name": FETCH_CONTAINER,
        "image": image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["kubeaccel"],
        "args": [
            "fetch-artifact",
            f"{artifacts_uri(res)}/{artifact}",
            artifact_dir(res, artifact),
        ],
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "TMPDIR", "value": "/tmp"},
            *s3_env(res),
        ],
        "resources": FETCH_RESOURCES,
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "artifacts", "mountPath": ARTIFACTS_ROOT}, tmp_volume()[1]],
    }


def _routing(
    res: AcceleratedModel, chain: Chain
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Shard 0's routing file: env, volume and mount (the ConfigMap may not exist yet)."""
    env = [
        {"name": "KUBEACCEL_ROUTING_FILE", "value": f"{ROUTING_DIR}/{ROUTING_FILE}"},
        {"name": "KUBEACCEL_CHAIN", "value": chain.value},
    ]
    volume = {
        "name": "routing",
        "configMap": {"name": routing_configmap_name(res.metadata.name), "optional": True},
    }
    return env, volume, {"name": "routing", "mountPath": ROUTING_DIR, "readOnly": True}


def build_deployment(
    res: AcceleratedModel, index: int, artifact: str, cfg: Settings, chain: Chain = Chain.A
) -> Manifest:
    """Deployment `<name>-shard-<i>` (chain a) or `<name>-b-shard-<i>` serving shard i."""
    runtime = res.spec.runtime
    spec_json = json.dumps(serving_spec(res), sort_keys=True, separators=(",", ":"))
    tmp, tmp_mount = tmp_volume()
    subpath = f"{res.metadata.name}/{artifact}"
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": serving_image(res, cfg),
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["kubeaccel"],
        "args": serve_args(res, index, artifact, chain),
        "env": [
            {"name": "KUBEACCEL_SPEC", "value": spec_json},
            {"name": "HOME", "value": "/tmp"},
            {"name": "TMPDIR", "value": "/tmp"},
        ],
        "ports": [container_port()],
        # Loading (and, for TensorRT, building engines) can take minutes; the startup probe
        # holds liveness off until the server answers.
        "startupProbe": _probe(LIVE_PATH, 5, 120),
        "livenessProbe": _probe(LIVE_PATH, 10, 3),
        "readinessProbe": _probe(READY_PATH, 5, 3),
        "resources": runtime_resources(res, cfg),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {
                "name": "artifacts",
                "mountPath": artifact_dir(res, artifact),
                "subPath": subpath,
                "readOnly": True,
            },
            tmp_mount,
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [artifacts_volume(res, read_only=True), tmp],
    }
    if uses_s3(res):
        pod_spec["initContainers"] = [fetch_container(res, artifact, container["image"], cfg)]
    if index == 0:
        env, volume, mount = _routing(res, chain)
        container["env"] += env
        container["volumeMounts"].append(mount)
        pod_spec["volumes"].append(volume)
    pod_spec.update(placement(res, runtime.affinity or default_affinity(res, index, chain)))
    if runtime.priority_class_name:
        pod_spec["priorityClassName"] = runtime.priority_class_name
    pod_labels = labels(res, chain.component, shard=index, artifact=artifact)
    pod_annotations = {
        # A runtime-only edit changes this hash (and KUBEACCEL_SPEC), which rolls the pods.
        ANNOTATION_SPEC_HASH: stable_hash([artifact, spec_json]),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(RUNTIME_PORT),
        "prometheus.io/path": "/metrics",
    }
    spec: dict[str, Any] = {}
    if runtime.autoscaling is None:
        # With an autoscaler the field is left to it (kube.py hands it over), so the two
        # never fight over the replica count.
        spec["replicas"] = runtime.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(res, shard_name(res.metadata.name, index, chain), pod_labels),
        "spec": {
            **spec,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(res, chain.component, index)},
            # Keep every old replica until its replacement is ready: the previous artifact
            # serves until the new one proves healthy (needs room for one extra pod).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }
