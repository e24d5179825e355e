"""The ConfigMap that hands the AcceleratedModel to the optimization Job."""

from __future__ import annotations

import yaml
from kubeaccel_api.constants import API_VERSION, KIND
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import (
    SPEC_FILE,
    Component,
    Manifest,
    labels,
    namespace_of,
    object_meta,
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
