"""Where pods run and what they request: GPUs, node selection, tolerations, affinity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubeaccel_api.constants import LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME
from kubeaccel_api.target import serving_target
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import (
    APP_NAME,
    Chain,
    selector_labels,
    shared_across_nodes,
)

if TYPE_CHECKING:
    from kubeaccel_operator.settings import Settings

HOSTNAME = "kubernetes.io/hostname"


def gpu_resource_name(res: AcceleratedModel, cfg: Settings) -> str:
    """The spec's GPU resource name when set explicitly, else the operator's default."""
    resources = res.spec.runtime.resources
    if "gpu_resource_name" in resources.model_fields_set:
        return resources.gpu_resource_name
    return cfg.gpu_resource_name


def runtime_resources(res: AcceleratedModel, cfg: Settings) -> dict[str, Any]:
    """Requests and limits of one runtime pod.

    CPU is requested but not limited (a CPU limit throttles latency-critical inference);
    memory and GPUs are limited. Extended resources need only a limit (the request equals it).
    """
    spec = res.spec.runtime.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.cpu is not None:
        requests["cpu"] = spec.cpu
    if spec.memory is not None:
        requests["memory"] = spec.memory
        limits["memory"] = spec.memory
    if spec.gpus > 0:
        limits[gpu_resource_name(res, cfg)] = str(spec.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def optimizer_wants_gpu(res: AcceleratedModel) -> bool:
    """Optimize where it will serve: a GPU target's Job measures candidates on that GPU.

    FP16 and TensorRT INT8 only pay off on the GPU, `auto` picks by measured latency, and
    TensorRT engines are built for one GPU class, so the Job needs the shards' GPU.
    """
    return serving_target(res.spec).is_gpu


def default_affinity(res: AcceleratedModel, shard: int, chain: Chain = Chain.A) -> dict[str, Any]:
    """Spread a shard's replicas across nodes, or co-locate when the volume is node-bound.

    A ReadWriteOnce claim attaches to one node at a time: a replica scheduled elsewhere
    would hang in ContainerCreating (Multi-Attach), so such pods are kept together.
    """
    if shared_across_nodes(res):
        return {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": HOSTNAME,
                            "labelSelector": {
                                "matchLabels": selector_labels(res, chain.component, shard)
                            },
                        },
                    }
                ]
            }
        }
    return {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "topologyKey": HOSTNAME,
                    # Every runtime pod of the model, whichever chain: one node holds the
                    # claim, so the candidate chain must land there too.
                    "labelSelector": {
                        "matchExpressions": [
                            {"key": LABEL_NAME, "operator": "In", "values": [APP_NAME]},
                            {
                                "key": LABEL_INSTANCE,
                                "operator": "In",
                                "values": [res.metadata.name],
                            },
                            {
                                "key": LABEL_COMPONENT,
                                "operator": "In",
                                "values": [c.component.value for c in Chain],
                            },
                        ]
                    },
                }
            ]
        }
    }


def placement(res: AcceleratedModel, affinity: dict[str, Any] | None) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and runtimeClassName from spec.runtime."""
    runtime = res.spec.runtime
    out: dict[str, Any] = {}
    if runtime.node_selector:
        out["nodeSelector"] = dict(sorted(runtime.node_selector.items()))
    if runtime.tolerations:
        out["tolerations"] = [t.to_wire() for t in runtime.tolerations]
    if affinity:
        out["affinity"] = affinity
    if runtime.runtime_class_name:
        out["runtimeClassName"] = runtime.runtime_class_name
    return out
