"""The ConfigMap that hands the AcceleratedModel to the optimization Job."""

from __future__ import annotations

import json

import yaml
from kubeaccel_api.constants import API_VERSION, KIND
from kubeaccel_api.routing import ROUTING_FILE, Routing
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import (
    SPEC_FILE,
    Component,
    Manifest,
    labels,
    namespace_of,
    object_meta,
    routing_configmap_name,
    spec_configmap_name,
)


def spec_document(res: AcceleratedModel) -> str:
    """The resource as a standalone YAML file `kubeaccel optimize --spec` reads."""
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": res.metadata.name, "namespace": namespace_of(res)},
        "spec": res.spec.to_wire(),
    }
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False)


def build_spec_configmap(res: AcceleratedModel) -> Manifest:
    """ConfigMap `<name>-spec` with `model.yaml`."""
    name = spec_configmap_name(res.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(res, name, labels(res, Component.SPEC)),
        "data": {SPEC_FILE: spec_document(res)},
    }


def build_routing_configmap(res: AcceleratedModel, routing: Routing) -> Manifest:
    """ConfigMap `<name>-routing`: what shard 0 of the serving chain mirrors or routes.

    Every shard-0 pod mounts it; the kubelet updates the file in place (no restart), and
    the server re-reads it when it changes.
    """
    name = routing_configmap_name(res.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(res, name, labels(res, Component.ROUTING)),
        "data": {ROUTING_FILE: json.dumps(routing.to_wire(), sort_keys=True)},
    }
