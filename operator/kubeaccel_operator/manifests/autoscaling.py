"""Autoscalers per shard: a HorizontalPodAutoscaler on CPU, or a KEDA ScaledObject.

KEDA creates and drives its own HPA for a ScaledObject, so a shard gets one or the other,
never both (two HPAs on one Deployment fight).
"""

from __future__ import annotations

from typing import Any

from kubeaccel_api.v1alpha1 import AcceleratedModel, AutoscalingSpec

from kubeaccel_operator.manifests.common import (
    Chain,
    Manifest,
    labels,
    object_meta,
    shard_name,
    shard_url,
)

# The in-flight gauge `kubeaccel serve` exposes on /metrics.
INFLIGHT_METRIC = "kubeaccel_inflight_requests"


def _parts(
    res: AcceleratedModel, index: int, chain: Chain
) -> tuple[AutoscalingSpec, dict[str, Any], dict[str, str]]:
    """The autoscaling spec, the autoscaler's metadata and its target (the shard's Deployment)."""
    scaling = res.spec.runtime.autoscaling
    if scaling is None:
        raise ValueError(f"{res.metadata.name}: spec.runtime.autoscaling is not set")
    name = shard_name(res.metadata.name, index, chain)
    meta = object_meta(res, name, labels(res, chain.component, shard=index))
    return scaling, meta, {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def build_hpa(res: AcceleratedModel, index: int, chain: Chain = Chain.A) -> Manifest:
    """autoscaling/v2 HPA of shard i: average CPU utilisation of its pods."""
    scaling, meta, target = _parts(res, index, chain)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": target,
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.target.cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def build_scaled_object(res: AcceleratedModel, index: int, chain: Chain = Chain.A) -> Manifest:
    """KEDA ScaledObject of shard i: in-flight requests read from the shard's /metrics.

    The metrics-api scaler reads one pod (through the shard's Service) per poll; with
    metricType Value the HPA KEDA drives computes replicas x value / target, i.e. it aims at
    `target.inflightRequests` per pod, like an average.
    """
    scaling, meta, target = _parts(res, index, chain)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": target,
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "triggers": [
                {
                    "type": "metrics-api",
                    "metricType": "Value",
                    "metadata": {
                        "url": f"{shard_url(res, index, chain)}/metrics",
                        "format": "prometheus",
                        "valueLocation": INFLIGHT_METRIC,
                        "targetValue": f"{scaling.target.inflight_requests:g}",
                    },
                }
            ],
        },
    }


def build_autoscaler(
    res: AcceleratedModel, index: int, chain: Chain, keda: bool
) -> Manifest | None:
    """The shard's autoscaler (KEDA where installed, else an HPA), or None without one."""
    if res.spec.runtime.autoscaling is None:
        return None
    return build_scaled_object(res, index, chain) if keda else build_hpa(res, index, chain)
