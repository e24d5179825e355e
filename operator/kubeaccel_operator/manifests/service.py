"""Services: one per shard (shard i calls shard i+1 through it) and the model's main one."""

from __future__ import annotations

from kubeaccel_api.constants import RUNTIME_PORT
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import (
    PORT_NAME,
    Chain,
    Component,
    Manifest,
    labels,
    object_meta,
    selector_labels,
    shard_name,
)


def _service(
    res: AcceleratedModel, name: str, component: Component, shard: int | None, chain: Chain
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(res, name, labels(res, component, shard=shard)),
        "spec": {
            "type": "ClusterIP",
            # The main Service (shard None) fronts the first shard of the serving chain.
            "selector": selector_labels(res, chain.component, shard or 0),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": RUNTIME_PORT,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_shard_service(res: AcceleratedModel, index: int, chain: Chain = Chain.A) -> Manifest:
    """Service of shard i of `chain`, named like its Deployment."""
    name = shard_name(res.metadata.name, index, chain)
    return _service(res, name, chain.component, index, chain)


def build_main_service(res: AcceleratedModel, chain: Chain = Chain.A) -> Manifest:
    """Service `<name>`: the model's endpoint, selecting shard 0 of the serving chain."""
    return _service(res, res.metadata.name, Component.ENDPOINT, None, chain)
