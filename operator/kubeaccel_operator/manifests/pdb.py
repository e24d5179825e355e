"""PodDisruptionBudgets: voluntary evictions take at most one replica of a shard at a time."""

from __future__ import annotations

from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import Chain, Manifest, selector_labels, shard_meta


def build_pdb(res: AcceleratedModel, index: int, chain: Chain = Chain.A) -> Manifest | None:
    """PDB of shard i when it can have more than one replica, else None.

    maxUnavailable (not minAvailable) stays right whatever count an autoscaler picks.
    """
    runtime = res.spec.runtime
    most = runtime.autoscaling.max_replicas if runtime.autoscaling else runtime.replicas
    if most <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": shard_meta(res, index, chain),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(res, chain.component, index)},
        },
    }
