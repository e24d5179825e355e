"""Pure: the two chains of shards a resource can run, as observed and as desired.

A chain is one full pipeline (Deployment + Service + PDB + autoscaler + the opt-in
NetworkPolicy per shard). The serving chain is the one the main Service selects; during a
shadow or canary rollout the candidate runs in the other chain, and a promotion points the
main Service at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubeaccel_api.constants import LABEL_ARTIFACT, LABEL_COMPONENT, LABEL_SHARD
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.autoscaling import build_autoscaler
from kubeaccel_operator.manifests.common import (
    ANNOTATION_SPEC_HASH,
    Chain,
    Manifest,
    chain_of_component,
    shard_name,
)
from kubeaccel_operator.manifests.deployment import build_deployment
from kubeaccel_operator.manifests.networkpolicy import build_network_policy, network_policy_enabled
from kubeaccel_operator.manifests.pdb import build_pdb
from kubeaccel_operator.manifests.service import build_shard_service

if TYPE_CHECKING:
    from kubeaccel_operator.reconcile import Observed
    from kubeaccel_operator.settings import Settings

# Kinds that make up a chain (the main Service is not part of any).
CHAIN_KINDS = (
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "NetworkPolicy",
)


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """metadata.labels of an object (empty when absent)."""
    found: Mapping[str, str] = obj.get("metadata", {}).get("labels") or {}
    return found


def chain_deployments(observed: Observed, chain: Chain) -> dict[str, Manifest]:
    """The observed shard Deployments of `chain`, by name."""
    return {
        name: obj
        for name, obj in observed.of_kind("Deployment").items()
        if labels_of(obj).get(LABEL_COMPONENT) == chain.component.value
    }


def serving_chain(res: AcceleratedModel, observed: Observed) -> Chain | None:
    """The chain the main Service selects, else the first chain that has shards."""
    main = observed.get("Service", res.metadata.name)
    if main is not None:
        selector = main.get("spec", {}).get("selector") or {}
        chain = chain_of_component(selector.get(LABEL_COMPONENT))
        if chain is not None and chain_deployments(observed, chain):
            return chain
    return next((c for c in Chain if chain_deployments(observed, c)), None)


def chain_artifact(res: AcceleratedModel, observed: Observed, chain: Chain) -> str | None:
    """The artifact a chain runs (its shard 0 decides while a roll is half done)."""
    deployments = chain_deployments(observed, chain)
    first = deployments.get(shard_name(res.metadata.name, 0, chain))
    for obj in [first] if first is not None else list(deployments.values()):
        artifact = labels_of(obj).get(LABEL_ARTIFACT)
        if artifact:
            return artifact
    return None


def chain_objects(
    res: AcceleratedModel, artifact: str, cfg: Settings, chain: Chain, keda: bool
) -> tuple[list[Manifest], dict[str, Manifest]]:
    """Every object of `chain` serving `artifact`, and its Deployments by name."""
    objects: list[Manifest] = []
    deployments: dict[str, Manifest] = {}
    fenced = network_policy_enabled(res, cfg)
    for i in range(res.spec.optimization.partition.shards):
        deployment = build_deployment(res, i, artifact, cfg, chain)
        deployments[deployment["metadata"]["name"]] = deployment
        objects += [build_shard_service(res, i, chain), deployment]
        for extra in (build_pdb(res, i, chain), build_autoscaler(res, i, chain, keda)):
            if extra is not None:
                objects.append(extra)
        if fenced:
            objects.append(build_network_policy(res, i, chain))
    return objects, deployments


def held(observed: Observed, chain: Chain) -> set[tuple[str, str]]:
    """(kind, name) of every observed object of `chain`: kept exactly as it runs."""
    return {
        (kind, name)
        for kind in CHAIN_KINDS
        for name, obj in observed.of_kind(kind).items()
        if labels_of(obj).get(LABEL_COMPONENT) == chain.component.value
    }


def template_hash(deployment: Mapping[str, Any]) -> str | None:
    """The pod template's spec hash (a changed one means a roll is due)."""
    template = deployment.get("spec", {}).get("template", {})
    annotations: Mapping[str, str] = template.get("metadata", {}).get("annotations") or {}
    return annotations.get(ANNOTATION_SPEC_HASH)


def replicas_of(deployment: Mapping[str, Any] | None) -> int:
    """spec.replicas (an autoscaled desired Deployment has none: 0)."""
    if deployment is None:
        return 0
    return int(deployment.get("spec", {}).get("replicas") or 0)


def shard_available(
    observed: Manifest | None, desired: Manifest | None, artifact: str, replicas: int
) -> tuple[bool, int]:
    """Whether a shard serves `artifact` with every replica available, and how many are."""
    if observed is None:
        return False, 0
    status = observed.get("status") or {}
    available = int(status.get("availableReplicas") or 0)
    if labels_of(observed).get(LABEL_ARTIFACT) != artifact:
        return False, available
    if desired is not None and template_hash(observed) != template_hash(desired):
        return False, available  # this reconcile rolls it
    return replicas > 0 and rollout_complete(observed, replicas), available


def still_rolling(desired: Manifest | None, observed: Mapping[str, Any]) -> bool:
    """Whether a Deployment is between pod templates: the desired one is not applied yet,
    its controller has not seen it, or pods of an older template are still running."""
    if desired is not None and template_hash(desired) != template_hash(observed):
        return True
    status = observed.get("status") or {}
    generation = int(observed.get("metadata", {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return True
    return int(status.get("replicas") or 0) > int(status.get("updatedReplicas") or 0)


def rollout_complete(deployment: Mapping[str, Any], replicas: int) -> bool:
    """Whether a Deployment's controller saw its current spec, every replica runs that
    spec and is available, and no pod of an older template is left (as `kubectl rollout
    status` judges it).

    availableReplicas counts old and new pods alike: mid-rollout, 2 available of 2 can be
    one old pod and one new one while another new pod is still starting; only
    `status.replicas <= updatedReplicas` (see still_rolling) says the old ones are gone.
    """
    if still_rolling(None, deployment):
        return False
    status = deployment.get("status") or {}
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    return updated >= replicas and available >= max(replicas, updated)


def wanted_replicas(desired: Manifest | None, seen: Manifest | None) -> int:
    """Replicas a shard should have: the desired count, else (autoscaled) the live one."""
    return replicas_of(desired) or replicas_of(seen)


def chain_ready(desired: Mapping[str, Manifest], observed: Observed, artifact: str) -> bool:
    """Whether every desired shard of a chain serves `artifact` with all replicas available."""
    return bool(desired) and all(
        shard_available(seen, want, artifact, wanted_replicas(want, seen))[0]
        for name, want in desired.items()
        for seen in [observed.get("Deployment", name)]
    )


def chain_failure(desired: Mapping[str, Manifest], observed: Observed) -> str | None:
    """Why a chain will never become available, as its Deployments say (progress deadline)."""
    for name in desired:
        seen = observed.get("Deployment", name) or {}
        for cond in (seen.get("status") or {}).get("conditions") or []:
            stuck = cond.get("type") == "Progressing" and cond.get("status") == "False"
            if stuck and cond.get("reason") == "ProgressDeadlineExceeded":
                return f"Deployment {name}: ProgressDeadlineExceeded: {cond.get('message', '')}"
    return None


def shard_index(obj: Mapping[str, Any]) -> int:
    """The shard index of a chain object (its label, else its name's tail)."""
    label = labels_of(obj).get(LABEL_SHARD)
    if label is not None and label.isdigit():
        return int(label)
    tail = str(obj.get("metadata", {}).get("name", "")).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
