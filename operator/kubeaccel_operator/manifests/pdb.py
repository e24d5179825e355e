"""PodDisruptionBudgets: voluntary evictions take at most one replica of a shard at a time."""

from __future__ import annotations

from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import (
    Component,
    Manifest,
    labels,
    object_meta,
    selector_labels,
    shard_name,
)


def build_pdb(res: AcceleratedModel, index: int) -> Manifest | None:
    """PDB `<name>-shard-<i>` when the shard has more than one replica, else None."""
    if res.spec.runtime.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(
            res,
            shard_name(res.metadata.name, index),
            labels(res, Component.RUNTIME, shard=index),
        ),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(res, Component.RUNTIME, index)},
        },
    }
