"""The PersistentVolumeClaim the optimizer writes artifacts to and the shards read."""

from __future__ import annotations

from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import (
    Component,
    Manifest,
    artifacts_claim_name,
    labels,
    object_meta,
    uses_s3,
)


def build_artifacts_pvc(res: AcceleratedModel) -> Manifest | None:
    """The artifacts claim from spec.storage.pvc; None for an existing claim or S3 storage."""
    pvc = res.spec.storage.pvc
    if uses_s3(res) or pvc.claim_name is not None:
        return None
    spec: dict[str, object] = {
        "accessModes": [pvc.access_mode.value],
        "resources": {"requests": {"storage": pvc.size}},
    }
    if pvc.storage_class_name is not None:
        spec["storageClassName"] = pvc.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(res, artifacts_claim_name(res), labels(res, Component.ARTIFACTS)),
        "spec": spec,
    }
