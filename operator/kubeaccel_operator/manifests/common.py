"""Shared pieces of every child manifest: names, labels, owner reference, security.

Everything here is pure: typed models in, plain dicts out; no client, clock or randomness.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from kubeaccel_api.constants import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_ARTIFACT,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_SHARD,
    RUNTIME_PORT,
)
from kubeaccel_api.v1alpha1 import AcceleratedModel, AccessMode, StorageType

Manifest = dict[str, Any]

APP_NAME = "kubeaccel"
MANAGED_BY = "kubeaccel-operator"
MAX_NAME = 63
# Non-root uid/gid of every pod; fsGroup makes the artifacts volume writable for it.
POD_UID = 65532
PORT_NAME = "http"
ARTIFACTS_ROOT = "/artifacts"
SOURCES_ROOT = "/mnt/sources"
SPEC_DIR = "/etc/kubeaccel"
SPEC_FILE = "model.yaml"
# Annotations the operator owns on children.
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
ARTIFACT_PREFIX_LENGTH = 10


class Component(StrEnum):
    """Value of app.kubernetes.io/component on each kind of child."""

    SPEC = "spec"
    ARTIFACTS = "artifacts"
    OPTIMIZER = "optimizer"
    RUNTIME = "runtime"
    # Chain b's pods: a different component keeps the two chains' selectors disjoint
    # (chain a's Deployment selectors predate chains and are immutable).
    RUNTIME_B = "runtime-b"
    ENDPOINT = "endpoint"
    ROUTING = "routing"


class Chain(StrEnum):
    """One of the two slots a pipeline of shards runs in.

    The serving chain is in one slot; a shadow or canary candidate runs in the other, and a
    promotion just points the main Service at it. Chain a keeps the original names.
    """

    A = "a"
    B = "b"

    @property
    def other(self) -> Chain:
        """The other slot."""
        return Chain.B if self is Chain.A else Chain.A

    @property
    def component(self) -> Component:
        """app.kubernetes.io/component of this chain's pods."""
        return Component.RUNTIME if self is Chain.A else Component.RUNTIME_B


def chain_of_component(component: str | None) -> Chain | None:
    """The chain whose pods carry this component label, if any."""
    return next((c for c in Chain if c.component.value == component), None)


def _name(*parts: str) -> str:
    name = "-".join(parts)
    # MAX_NAME_LENGTH (40) on the resource name leaves room for every suffix below.
    if len(name) > MAX_NAME:
        raise ValueError(f"child name {name!r} is longer than {MAX_NAME} characters")
    return name


def spec_configmap_name(model: str) -> str:
    """ConfigMap holding the AcceleratedModel YAML the Job reads."""
    return _name(model, "spec")


def artifacts_claim_name(res: AcceleratedModel) -> str:
    """The artifacts PVC: the one named in the spec, else `<name>-artifacts`."""
    return res.spec.storage.pvc.claim_name or _name(res.metadata.name, "artifacts")


def job_name(model: str, artifact: str) -> str:
    """The optimization Job of one artifact."""
    return _name(model, "opt", artifact[:ARTIFACT_PREFIX_LENGTH])


def shard_name(model: str, index: int, chain: Chain = Chain.A) -> str:
    """Deployment, Service, PodDisruptionBudget and autoscaler of one shard of a chain."""
    if chain is Chain.A:
        return _name(model, "shard", str(index))
    return _name(model, chain.value, "shard", str(index))


def routing_configmap_name(model: str) -> str:
    """ConfigMap with the shadow/canary routing shard 0 of the serving chain applies."""
    return _name(model, "routing")


def namespace_of(res: AcceleratedModel) -> str:
    """The resource's namespace (API objects always have one)."""
    return res.metadata.namespace or "default"


def shard_url(res: AcceleratedModel, index: int, chain: Chain = Chain.A) -> str:
    """In-cluster base URL of shard `index`'s Service in `chain`."""
    name = shard_name(res.metadata.name, index, chain)
    return f"http://{name}.{namespace_of(res)}.svc:{RUNTIME_PORT}"


def endpoint_url(res: AcceleratedModel) -> str:
    """The Open Inference Protocol v2 model URL behind the main Service."""
    name = res.metadata.name
    return f"http://{name}.{namespace_of(res)}.svc:{RUNTIME_PORT}/v2/models/{name}"


def selector_labels(
    res: AcceleratedModel, component: Component, shard: int | None = None
) -> dict[str, str]:
    """The immutable labels a selector matches (never the artifact id)."""
    labels = {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: res.metadata.name,
        LABEL_COMPONENT: component.value,
    }
    if shard is not None:
        labels[LABEL_SHARD] = str(shard)
    return labels


def labels(
    res: AcceleratedModel,
    component: Component,
    *,
    shard: int | None = None,
    artifact: str | None = None,
) -> dict[str, str]:
    """The app.kubernetes.io/* set plus the model, shard and artifact keys."""
    out = {
        **selector_labels(res, component, shard),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: APP_NAME,
        LABEL_MODEL: res.metadata.name,
    }
    if artifact is not None:
        out[LABEL_ARTIFACT] = artifact
    return dict(sorted(out.items()))


def owner_reference(res: AcceleratedModel) -> dict[str, Any]:
    """Controller owner reference: deleting the resource garbage-collects the child."""
    if not res.metadata.uid:
        raise ValueError(f"{res.metadata.name}: metadata.uid is required to own children")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": res.metadata.name,
        "uid": res.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    res: AcceleratedModel,
    name: str,
    child_labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """metadata of a child: name, namespace, labels, owner reference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace_of(res),
        "labels": child_labels,
    }
    if annotations:
        meta["annotations"] = annotations
    meta["ownerReferences"] = [owner_reference(res)]
    return meta


def shard_meta(res: AcceleratedModel, index: int, chain: Chain = Chain.A) -> dict[str, Any]:
    """metadata of a per-shard object of a chain, named as its shard (PDB, NetworkPolicy)."""
    return object_meta(
        res,
        shard_name(res.metadata.name, index, chain),
        labels(res, chain.component, shard=index),
    )


def pod_security_context() -> dict[str, Any]:
    """Pod-level half of the restricted Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_UID,
        "runAsGroup": POD_UID,
        "fsGroup": POD_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level half of the restricted Pod Security Standard."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tmp_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """A writable /tmp (the root filesystem is read-only): volume and mount."""
    return (
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "tmp", "mountPath": "/tmp"},
    )


def stable_hash(obj: Any) -> str:
    """16 hex chars of the SHA-256 of canonical JSON (stable across processes)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def source_claims(res: AcceleratedModel) -> list[str]:
    """Claims named by pvc:// URIs in the source, calibration and validation data."""
    opt = res.spec.optimization
    uris = [
        res.spec.source.uri,
        opt.validation.uri,
        opt.quantization.calibration.uri if opt.quantization.calibration else None,
    ]
    claims = {
        uri.removeprefix("pvc://").split("/", 1)[0]
        for uri in uris
        if uri and uri.startswith("pvc://")
    }
    return sorted(claims)


def shared_across_nodes(res: AcceleratedModel) -> bool:
    """Whether pods on several nodes can read the artifacts at once."""
    return uses_s3(res) or res.spec.storage.pvc.access_mode is AccessMode.READ_WRITE_MANY


def uses_s3(res: AcceleratedModel) -> bool:
    """Whether artifacts live in an S3 bucket (else on the artifacts claim)."""
    return res.spec.storage.type is StorageType.S3


def existing_claim(res: AcceleratedModel) -> str | None:
    """The claim spec.storage.pvc.claimName names, when artifacts live on a claim."""
    return None if uses_s3(res) else res.spec.storage.pvc.claim_name


def artifacts_uri(res: AcceleratedModel) -> str:
    """s3://<bucket>/<prefix>/<model>: the Job publishes <artifact-id>/ below it."""
    s3 = res.spec.storage.s3
    assert s3 is not None  # the API requires s3 settings with type s3
    key = "/".join(p for p in (s3.prefix.strip("/"), res.metadata.name) if p)
    return f"s3://{s3.bucket}/{key}"


def s3_env(res: AcceleratedModel) -> list[dict[str, Any]]:
    """The AWS_* variables the runtime's S3 client reads (credentials from the Secret)."""
    s3 = res.spec.storage.s3
    if s3 is None:
        return []
    env: list[dict[str, Any]] = []
    if s3.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint.rstrip("/")})
    if s3.region:
        env.append({"name": "AWS_REGION", "value": s3.region})
    if s3.secret_name:
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            ref = {"name": s3.secret_name, "key": key, "optional": optional}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def artifacts_volume(res: AcceleratedModel, *, read_only: bool) -> dict[str, Any]:
    """The `artifacts` volume: the claim, or a pod-local emptyDir the artifact is copied into."""
    if uses_s3(res):
        return {"name": "artifacts", "emptyDir": {}}
    claim: dict[str, Any] = {"claimName": artifacts_claim_name(res)}
    if read_only:
        claim["readOnly"] = True
    return {"name": "artifacts", "persistentVolumeClaim": claim}


def serving_spec(res: AcceleratedModel) -> dict[str, Any]:
    """The spec the runtime reads (KUBEACCEL_SPEC): everything but storage and network.

    Storage only tells the operator where artifacts live and networkPolicy who may reach
    the pods, so editing them must not roll the serving pods.
    """
    wire = res.spec.to_wire()
    wire.pop("storage", None)
    wire.pop("networkPolicy", None)
    return wire


def container_port() -> dict[str, Any]:
    """The runtime's HTTP port."""
    return {"name": PORT_NAME, "containerPort": RUNTIME_PORT, "protocol": "TCP"}


_SUFFIXES: dict[str, Decimal | int] = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(text: str) -> Decimal | None:
    """A Kubernetes quantity as a number (`500m` -> 0.5), or None if it is not one."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            number = text[: -len(suffix)]
            break
    else:
        suffix, number = "", text
    try:
        return Decimal(number) * Decimal(_SUFFIXES[suffix])
    except InvalidOperation:
        return None
