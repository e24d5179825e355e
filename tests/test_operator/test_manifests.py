"""Manifest builders, compared as whole dicts: CPU, 1 GPU, 2 shards x 2 GPUs, placement."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from kubeaccel_api.constants import LABEL_COMPONENT
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_operator.manifests.common import (
    Chain,
    job_name,
    owner_reference,
    shard_name,
    source_claims,
)
from kubeaccel_operator.manifests.configmap import build_spec_configmap
from kubeaccel_operator.manifests.deployment import build_deployment
from kubeaccel_operator.manifests.job import build_job
from kubeaccel_operator.manifests.networkpolicy import build_network_policy, network_policy_enabled
from kubeaccel_operator.manifests.pdb import build_pdb
from kubeaccel_operator.manifests.pvc import build_artifacts_pvc
from kubeaccel_operator.manifests.service import build_main_service, build_shard_service
from kubeaccel_operator.settings import Settings
from operator_samples import GPU2, NAME, NS, OWNER, aid, model


class Hex16:
    """Matches any 16-hex-digit hash (its value is pinned by behaviour tests below)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and re.fullmatch(r"[0-9a-f]{16}", other) is not None

    def __repr__(self) -> str:
        return "<16 hex>"


class SpecJson:
    """Matches KUBEACCEL_SPEC: compact JSON of the spec without storage and networkPolicy."""

    def __init__(self, spec: AcceleratedModelSpec) -> None:
        skip = ("storage", "networkPolicy")
        self.expected = {k: v for k, v in spec.to_wire().items() if k not in skip}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and json.loads(other) == self.expected

    def __repr__(self) -> str:
        return f"<spec json {self.expected}>"


def common_labels(component: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": NAME,
        "app.kubernetes.io/managed-by": "kubeaccel-operator",
        "app.kubernetes.io/name": "kubeaccel",
        "app.kubernetes.io/part-of": "kubeaccel",
        "kubeaccel.io/model": NAME,
        **extra,
    }


def selector(shard: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubeaccel",
        "app.kubernetes.io/instance": NAME,
        "app.kubernetes.io/component": "runtime",
        "kubeaccel.io/shard": str(shard),
    }


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
IMAGE = "ghcr.io/kubeaccel/runtime:0.1.0"
OPTIMIZER_IMAGE = "ghcr.io/kubeaccel/optimizer:0.1.0"
GPU_IMAGE = "ghcr.io/kubeaccel/runtime:0.1.0-gpu"


def probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


CO_LOCATE = {
    "podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "topologyKey": "kubernetes.io/hostname",
                # Both chains: a candidate chain must land on the node holding the claim.
                "labelSelector": {
                    "matchExpressions": [
                        {
                            "key": "app.kubernetes.io/name",
                            "operator": "In",
                            "values": ["kubeaccel"],
                        },
                        {"key": "app.kubernetes.io/instance", "operator": "In", "values": [NAME]},
                        {
                            "key": "app.kubernetes.io/component",
                            "operator": "In",
                            "values": ["runtime", "runtime-b"],
                        },
                    ]
                },
            }
        ]
    }
}
ROUTING_ENV = [
    {"name": "KUBEACCEL_ROUTING_FILE", "value": "/etc/kubeaccel/routing/routing.json"},
    {"name": "KUBEACCEL_CHAIN", "value": "a"},
]
ROUTING_MOUNT = {"name": "routing", "mountPath": "/etc/kubeaccel/routing", "readOnly": True}
ROUTING_VOLUME = {"name": "routing", "configMap": {"name": f"{NAME}-routing", "optional": True}}


def expected_deployment(
    *,
    shard: int,
    artifact: str,
    spec: AcceleratedModelSpec,
    replicas: int = 1,
    next_url: str | None = None,
    resources: dict[str, Any] | None = None,
    placement: dict[str, Any] | None = None,
    threads: int | None = None,
    image: str = IMAGE,
) -> dict[str, Any]:
    args = [
        "serve",
        "--artifacts",
        f"/artifacts/{NAME}/{artifact}",
        "--shard",
        str(shard),
        "--port",
        "8080",
        "--host",
        "0.0.0.0",
    ]
    if next_url:
        args += ["--next", next_url]
    if threads:
        args += ["--threads", str(threads)]
    labels = common_labels(
        "runtime", **{"kubeaccel.io/shard": str(shard), "kubeaccel.io/artifact-id": artifact}
    )
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 45,
        "securityContext": POD_SECURITY,
        "containers": [
            {
                "name": "runtime",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["kubeaccel"],
                "args": args,
                "env": [
                    {"name": "KUBEACCEL_SPEC", "value": SpecJson(spec)},
                    {"name": "HOME", "value": "/tmp"},
                    {"name": "TMPDIR", "value": "/tmp"},
                    *(ROUTING_ENV if shard == 0 else []),
                ],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "startupProbe": probe("/v2/health/live", 5, 120),
                "livenessProbe": probe("/v2/health/live", 10, 3),
                "readinessProbe": probe("/v2/health/ready", 5, 3),
                "resources": resources or {},
                "securityContext": CONTAINER_SECURITY,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {
                        "name": "artifacts",
                        "mountPath": f"/artifacts/{NAME}/{artifact}",
                        "subPath": f"{NAME}/{artifact}",
                        "readOnly": True,
                    },
                    {"name": "tmp", "mountPath": "/tmp"},
                    *([ROUTING_MOUNT] if shard == 0 else []),
                ],
            }
        ],
        "volumes": [
            {
                "name": "artifacts",
                "persistentVolumeClaim": {"claimName": f"{NAME}-artifacts", "readOnly": True},
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            *([ROUTING_VOLUME] if shard == 0 else []),
        ],
        **(placement if placement is not None else {"affinity": CO_LOCATE}),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{NAME}-shard-{shard}",
            "namespace": NS,
            "labels": labels,
            "ownerReferences": [OWNER],
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(shard)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "kubeaccel.io/spec-hash": Hex16(),
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "8080",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def expected_job(
    artifact: str,
    *,
    resources: dict[str, Any],
    placement: dict[str, Any] | None = None,
    image: str = OPTIMIZER_IMAGE,
) -> dict[str, Any]:
    labels = common_labels("optimizer", **{"kubeaccel.io/artifact-id": artifact})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{NAME}-opt-{artifact[:10]}",
            "namespace": NS,
            "labels": labels,
            "ownerReferences": [OWNER],
        },
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 3600,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": POD_SECURITY,
                    "containers": [
                        {
                            "name": "optimize",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["kubeaccel"],
                            "args": [
                                "optimize",
                                "--spec",
                                "/etc/kubeaccel/model.yaml",
                                "--out",
                                f"/artifacts/{NAME}",
                            ],
                            "env": [
                                {"name": "KUBEACCEL_PVC_ROOT", "value": "/mnt/sources"},
                                {"name": "HOME", "value": "/tmp"},
                                {"name": "TMPDIR", "value": "/tmp"},
                            ],
                            "resources": resources,
                            "securityContext": CONTAINER_SECURITY,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [
                                {"name": "artifacts", "mountPath": "/artifacts"},
                                {"name": "spec", "mountPath": "/etc/kubeaccel", "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {
                                    "name": "source-0",
                                    "mountPath": "/mnt/sources/models",
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "artifacts",
                            "persistentVolumeClaim": {"claimName": f"{NAME}-artifacts"},
                        },
                        {"name": "spec", "configMap": {"name": f"{NAME}-spec"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                        {
                            "name": "source-0",
                            "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
                        },
                    ],
                    **(placement or {}),
                },
            },
        },
    }


CPU_JOB_RESOURCES = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
GPU_JOB_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "2Gi"},
    "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"},
}


# --------------------------------------------------------------------------- CPU


def test_cpu_deployment_is_the_whole_expected_dict(cfg: Settings) -> None:
    res = model()
    artifact = aid()
    assert build_deployment(res, 0, artifact, cfg) == expected_deployment(
        shard=0, artifact=artifact, spec=res.spec
    )


def test_cpu_job_is_the_whole_expected_dict(cfg: Settings) -> None:
    artifact = aid()
    assert build_job(model(), artifact, cfg) == expected_job(artifact, resources=CPU_JOB_RESOURCES)


def test_services_select_their_shard_and_the_main_service_selects_shard_zero() -> None:
    res = model()
    port = [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert build_shard_service(res, 0) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{NAME}-shard-0",
            "namespace": NS,
            "labels": common_labels("runtime", **{"kubeaccel.io/shard": "0"}),
            "ownerReferences": [OWNER],
        },
        "spec": {"type": "ClusterIP", "selector": selector(0), "ports": port},
    }
    assert build_main_service(res) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "labels": common_labels("endpoint"),
            "ownerReferences": [OWNER],
        },
        "spec": {"type": "ClusterIP", "selector": selector(0), "ports": port},
    }


def test_spec_configmap_holds_the_resource_as_a_standalone_yaml_file() -> None:
    res = model()
    cm = build_spec_configmap(res)
    document = yaml.safe_load(cm["data"]["model.yaml"])
    assert cm == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{NAME}-spec",
            "namespace": NS,
            "labels": common_labels("spec"),
            "ownerReferences": [OWNER],
        },
        "data": {"model.yaml": cm["data"]["model.yaml"]},
    }
    assert document == {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": res.spec.to_wire(),
    }


def test_artifacts_pvc_follows_spec_storage_and_is_skipped_for_an_existing_claim() -> None:
    res = model(
        {
            "storage": {
                "pvc": {"size": "10Gi", "storageClassName": "fast", "accessMode": "ReadWriteMany"}
            }
        }
    )
    assert build_artifacts_pvc(res) == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": f"{NAME}-artifacts",
            "namespace": NS,
            "labels": common_labels("artifacts"),
            "ownerReferences": [OWNER],
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "10Gi"}},
            "storageClassName": "fast",
        },
    }
    assert build_artifacts_pvc(model({"storage": {"pvc": {"claimName": "shared"}}})) is None


def test_an_existing_claim_is_mounted_by_the_job_and_the_shards(cfg: Settings) -> None:
    res = model({"storage": {"pvc": {"claimName": "shared"}}})
    artifact = aid({"storage": {"pvc": {"claimName": "shared"}}})
    job_volumes = build_job(res, artifact, cfg)["spec"]["template"]["spec"]["volumes"]
    deployment_volumes = build_deployment(res, 0, artifact, cfg)["spec"]["template"]["spec"][
        "volumes"
    ]
    assert job_volumes[0] == {"name": "artifacts", "persistentVolumeClaim": {"claimName": "shared"}}
    assert deployment_volumes[0] == {
        "name": "artifacts",
        "persistentVolumeClaim": {"claimName": "shared", "readOnly": True},
    }


S3 = {
    "storage": {
        "type": "s3",
        "s3": {
            "bucket": "models",
            "prefix": "/team/kubeaccel/",
            "endpoint": "http://minio.storage:9000/",
            "region": "eu-west-1",
            "secretName": "s3-creds",
        },
    }
}
S3_ENV = [
    {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"},
    {"name": "AWS_REGION", "value": "eu-west-1"},
    *(
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": key, "optional": optional}},
        }
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        )
    ),
]


def test_s3_storage_has_no_claim_and_the_job_publishes_to_the_bucket(cfg: Settings) -> None:
    res, artifact = model(S3), aid(S3)
    assert build_artifacts_pvc(res) is None
    pod = build_job(res, artifact, cfg)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == [
        *("optimize", "--spec", "/etc/kubeaccel/model.yaml", "--out", f"/artifacts/{NAME}"),
        *("--publish", f"s3://models/team/kubeaccel/{NAME}"),
    ]
    assert container["env"][3:] == S3_ENV
    assert pod["volumes"][0] == {"name": "artifacts", "emptyDir": {}}
    assert container["volumeMounts"][0] == {"name": "artifacts", "mountPath": "/artifacts"}


def test_s3_shards_fetch_and_verify_the_artifact_before_serving_it(cfg: Settings) -> None:
    res, artifact = model(S3), aid(S3)
    pod = build_deployment(res, 0, artifact, cfg)["spec"]["template"]["spec"]
    runtime = pod["containers"][0]
    assert pod["initContainers"] == [
        {
            "name": "fetch-artifact",
            "image": runtime["image"],
            "imagePullPolicy": cfg.image_pull_policy,
            "command": ["kubeaccel"],
            "args": [
                "fetch-artifact",
                f"s3://models/team/kubeaccel/{NAME}/{artifact}",
                f"/artifacts/{NAME}/{artifact}",
            ],
            "env": [
                {"name": "HOME", "value": "/tmp"},
                {"name": "TMPDIR", "value": "/tmp"},
                *S3_ENV,
            ],
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"memory": "512Mi"},
            },
            "securityContext": runtime["securityContext"],
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [
                {"name": "artifacts", "mountPath": "/artifacts"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
    ]
    assert pod["volumes"][0] == {"name": "artifacts", "emptyDir": {}}
    # The server reads the fetched copy exactly where it would read the claim's.
    assert runtime["volumeMounts"][0] == {
        "name": "artifacts",
        "mountPath": f"/artifacts/{NAME}/{artifact}",
        "subPath": f"{NAME}/{artifact}",
        "readOnly": True,
    }
    assert "podAntiAffinity" in pod["affinity"]  # every pod has its own copy: spread them
    assert (
        "initContainers" not in build_deployment(model(), 0, aid(), cfg)["spec"]["template"]["spec"]
    )


def test_s3_without_endpoint_region_or_secret_sets_no_variable(cfg: Settings) -> None:
    spec = {"storage": {"type": "s3", "s3": {"bucket": "models", "prefix": ""}}}
    pod = build_deployment(model(spec), 0, aid(spec), cfg)["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert fetch["env"] == [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}]
    assert fetch["args"][1] == f"s3://models/{NAME}/{aid(spec)}"


# --------------------------------------------------------------------------- GPUs


def test_one_gpu_deployment_limits_the_gpu_and_requests_cpu_and_memory(cfg: Settings) -> None:
    spec = {"runtime": {"resources": {"gpus": 1, "cpu": "500m", "memory": "1Gi"}}}
    res = model(spec)
    artifact = aid(spec)
    assert build_deployment(res, 0, artifact, cfg) == expected_deployment(
        shard=0,
        artifact=artifact,
        spec=res.spec,
        resources={
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"memory": "1Gi", "nvidia.com/gpu": "1"},
        },
        threads=1,
        image=GPU_IMAGE,
    )


@pytest.mark.parametrize("mode", ["none", "dynamic-int8", "static-int8", "fp16", "auto"])
def test_a_gpu_target_optimizes_on_the_gpu_image_with_a_gpu_whatever_the_precision(
    cfg: Settings, mode: str
) -> None:
    spec: dict[str, Any] = {
        "runtime": {"resources": {"gpus": 1}},
        "optimization": {"quantization": {"mode": mode}},
    }
    if mode == "static-int8":
        spec["optimization"]["quantization"]["calibration"] = {"samples": 16}
    artifact = aid(spec)
    assert build_job(model(spec), artifact, cfg) == expected_job(
        artifact, resources=GPU_JOB_RESOURCES, image=GPU_IMAGE
    )


def test_a_model_served_on_the_cpu_provider_optimizes_on_the_cpu_even_with_gpus(
    cfg: Settings,
) -> None:
    spec = {
        "runtime": {
            "executionProvider": "cpu",
            "resources": {"gpus": 1},
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
        },
    }
    res = model(spec)
    artifact = aid(spec)
    assert build_job(res, artifact, cfg) == expected_job(artifact, resources=CPU_JOB_RESOURCES)
    image = build_deployment(res, 0, artifact, cfg)["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == IMAGE


def test_the_gpu_image_comes_from_settings_and_spec_runtime_image_overrides_it() -> None:
    spec: dict[str, Any] = {"runtime": {"executionProvider": "cuda", "resources": {"gpus": 1}}}
    custom = Settings(runtime_image="reg.example/rt:9", optimizer_image="reg.example/opt:9")
    explicit = Settings(gpu_runtime_image="reg.example/rt-gpu:cuda13")

    def images(spec: dict[str, Any], cfg: Settings) -> tuple[str, str]:
        res, artifact = model(spec), aid(spec)
        job = build_job(res, artifact, cfg)["spec"]["template"]["spec"]["containers"][0]
        pod = build_deployment(res, 0, artifact, cfg)["spec"]["template"]["spec"]
        return job["image"], pod["containers"][0]["image"]

    assert images(spec, custom) == ("reg.example/rt:0.1.0-gpu", "reg.example/rt:0.1.0-gpu")
    assert images(spec, explicit) == ("reg.example/rt-gpu:cuda13", "reg.example/rt-gpu:cuda13")
    spec["runtime"]["image"] = "mine/serve:trt10"
    assert images(spec, explicit) == ("mine/serve:trt10", "mine/serve:trt10")


def test_two_shards_with_two_gpus_each_chain_and_get_a_disruption_budget(cfg: Settings) -> None:
    res = model(GPU2)
    artifact = aid(GPU2)
    resources = {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "2"},
    }
    assert build_deployment(res, 0, artifact, cfg) == expected_deployment(
        shard=0,
        artifact=artifact,
        spec=res.spec,
        replicas=2,
        next_url=f"http://{NAME}-shard-1.{NS}.svc:8080",
        resources=resources,
        threads=2,
        image=GPU_IMAGE,
    )
    assert build_deployment(res, 1, artifact, cfg) == expected_deployment(
        shard=1,
        artifact=artifact,
        spec=res.spec,
        replicas=2,
        resources=resources,
        threads=2,
        image=GPU_IMAGE,
    )
    for shard in (0, 1):
        assert build_pdb(res, shard) == {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {
                "name": f"{NAME}-shard-{shard}",
                "namespace": NS,
                "labels": common_labels("runtime", **{"kubeaccel.io/shard": str(shard)}),
                "ownerReferences": [OWNER],
            },
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(shard)}},
        }
    assert build_pdb(model(), 0) is None


def test_a_gpu_job_lands_on_one_gpu_of_the_serving_type_with_the_shards_placement(
    cfg: Settings,
) -> None:
    zone = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    spec = {
        **GPU2,
        "runtime": {
            **GPU2["runtime"],
            "executionProvider": "tensorrt",
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "affinity": zone,
            "runtimeClassName": "nvidia",
            "priorityClassName": "inference-critical",
        },
    }
    artifact = aid(spec)
    placement = {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": zone,
        "runtimeClassName": "nvidia",
    }
    assert build_job(model(spec), artifact, cfg) == expected_job(
        artifact, resources=GPU_JOB_RESOURCES, placement=placement, image=GPU_IMAGE
    )
    pod = build_deployment(model(spec), 0, artifact, cfg)["spec"]["template"]["spec"]
    shard_placement = {k: pod[k] for k in placement}
    assert shard_placement == placement


def test_the_gpu_resource_name_comes_from_the_spec_when_set_else_from_settings() -> None:
    amd = Settings(gpu_resource_name="amd.com/gpu")
    implicit = {"runtime": {"resources": {"gpus": 1}}}
    explicit = {"runtime": {"resources": {"gpus": 1, "gpuResourceName": "gpu.intel.com/i915"}}}
    limits = build_deployment(model(implicit), 0, aid(implicit), amd)["spec"]["template"]["spec"][
        "containers"
    ][0]["resources"]["limits"]
    assert limits == {"amd.com/gpu": "1"}
    limits = build_deployment(model(explicit), 0, aid(explicit), amd)["spec"]["template"]["spec"][
        "containers"
    ][0]["resources"]["limits"]
    assert limits == {"gpu.intel.com/i915": "1"}


# --------------------------------------------------------------------------- placement


def test_tolerations_node_selector_affinity_and_classes_reach_the_pod_spec(cfg: Settings) -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "gpu", "operator": "In", "values": ["a100", "h100"]}
                        ]
                    }
                ]
            }
        }
    }
    spec = {
        "runtime": {
            "resources": {"gpus": 1},
            "nodeSelector": {"pool": "gpu", "accelerator": "h100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {
                    "key": "spot",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                },
            ],
            "affinity": affinity,
            "runtimeClassName": "nvidia",
            "priorityClassName": "inference-critical",
            "image": "registry.example/kubeaccel-runtime:gpu",
        }
    }
    res = model(spec)
    artifact = aid(spec)
    expected = expected_deployment(
        shard=0,
        artifact=artifact,
        spec=res.spec,
        resources={"limits": {"nvidia.com/gpu": "1"}},
        placement={
            "nodeSelector": {"accelerator": "h100", "pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {
                    "key": "spot",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                },
            ],
            "affinity": affinity,
            "runtimeClassName": "nvidia",
            "priorityClassName": "inference-critical",
        },
    )
    expected["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "registry.example/kubeaccel-runtime:gpu"
    )
    assert build_deployment(res, 0, artifact, cfg) == expected


def test_shareable_artifacts_spread_replicas_across_nodes_by_default(cfg: Settings) -> None:
    spec = {"storage": {"pvc": {"accessMode": "ReadWriteMany"}}, "runtime": {"replicas": 3}}
    pod = build_deployment(model(spec), 1, aid(spec), cfg)["spec"]["template"]["spec"]
    assert pod["affinity"] == {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector(1)},
                    },
                }
            ]
        }
    }


# --------------------------------------------------------------------------- names, owners, hashes


def test_names_stay_within_63_characters_for_the_longest_resource_name() -> None:
    longest = "m" * 40
    assert len(job_name(longest, "f" * 16)) <= 63
    assert len(shard_name(longest, 15)) <= 63
    with pytest.raises(ValueError, match="longer than 63"):
        shard_name("m" * 60, 15)


def test_children_cannot_be_owned_without_the_parent_uid() -> None:
    res = model()
    res = res.model_copy(update={"metadata": res.metadata.model_copy(update={"uid": None})})
    with pytest.raises(ValueError, match=r"metadata\.uid is required"):
        owner_reference(res)


def test_runtime_changes_change_the_pod_hash_and_storage_changes_do_not(cfg: Settings) -> None:
    def pod_hash(spec: dict[str, Any]) -> str:
        template = build_deployment(model(spec), 0, aid(), cfg)["spec"]["template"]
        return str(template["metadata"]["annotations"]["kubeaccel.io/spec-hash"])

    base = pod_hash({})
    assert pod_hash({"runtime": {"batching": {"enabled": True}}}) != base
    assert pod_hash({"limits": {"maxBatch": 8}}) != base
    assert pod_hash({"storage": {"pvc": {"size": "20Gi"}}}) == base
    assert pod_hash({"networkPolicy": {"enabled": True}}) == base  # fences, no roll
    assert pod_hash({}) == base


def test_source_claims_collect_every_pvc_uri_once() -> None:
    spec = {
        "source": {"uri": "pvc://models/a/b.onnx"},
        "optimization": {
            "validation": {"uri": "pvc://data/val.npz"},
            "quantization": {
                "mode": "static-int8",
                "calibration": {"uri": "pvc://models/calib.npz"},
            },
        },
    }
    assert source_claims(model(spec)) == ["data", "models"]
    assert source_claims(model({"source": {"uri": "https://example.com/m.onnx"}})) == []


@pytest.mark.parametrize(("cpu", "threads"), [("1500m", "2"), ("100m", "1"), ("4", "4")])
def test_runtime_threads_follow_the_cpu_request(cfg: Settings, cpu: str, threads: str) -> None:
    spec = {"runtime": {"resources": {"cpu": cpu}}}
    args = build_deployment(model(spec), 0, aid(spec), cfg)["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert args[-2:] == ["--threads", threads]


def test_shard_network_policies_admit_clients_to_shard_0_and_shard_i_minus_1_to_shard_i() -> None:
    res = model(GPU2)

    def pods(component: str, shard: int) -> dict[str, Any]:
        return {"podSelector": {"matchLabels": {**selector(shard), LABEL_COMPONENT: component}}}

    def policy(chain: str, shard: int, peers: list[dict[str, Any]]) -> dict[str, Any]:
        component = "runtime" if chain == "a" else "runtime-b"
        infix = "" if chain == "a" else "b-"
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": f"{NAME}-{infix}shard-{shard}",
                "namespace": NS,
                "labels": common_labels(component, **{"kubeaccel.io/shard": str(shard)}),
                "ownerReferences": [OWNER],
            },
            "spec": {
                "podSelector": pods(component, shard)["podSelector"],
                "policyTypes": ["Ingress"],
                "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": 8080}]}],
            },
        }

    clients = {"podSelector": {"matchLabels": {"kubeaccel.io/client": "true"}}}
    # Shard 0 admits the clients and the other chain's shard 0 (a shadow or canary rollout
    # mirrors or forwards between them); shard 1 admits its own chain's shard 0 only.
    assert build_network_policy(res, 0) == policy("a", 0, [clients, pods("runtime-b", 0)])
    assert build_network_policy(res, 1) == policy("a", 1, [pods("runtime", 0)])
    assert build_network_policy(res, 0, Chain.B) == policy("b", 0, [clients, pods("runtime", 0)])
    assert build_network_policy(res, 1, Chain.B) == policy("b", 1, [pods("runtime-b", 0)])


def test_named_clients_replace_the_client_label() -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"team": "web"}}},
        {"ipBlock": {"cidr": "10.1.0.0/16"}},
    ]
    res = model({"networkPolicy": {"enabled": True, "clients": peers}})
    assert build_network_policy(res, 0)["spec"]["ingress"][0]["from"][:2] == peers


@pytest.mark.parametrize(
    ("spec", "default", "enabled"),
    [
        ({}, False, False),
        ({}, True, True),
        ({"networkPolicy": {"enabled": False}}, True, False),
        ({"networkPolicy": {"enabled": True}}, False, True),
    ],
)
def test_the_spec_decides_network_policies_and_the_operator_default_fills_in(
    spec: dict[str, Any], default: bool, enabled: bool
) -> None:
    assert network_policy_enabled(model(spec), Settings(network_policy=default)) is enabled
