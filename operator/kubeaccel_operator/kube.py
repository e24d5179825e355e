"""The only module that calls the Kubernetes API.

It observes an AcceleratedModel's children by label, applies a plan by deterministic
name (create if absent, server-side apply on drift, delete labelled orphans), reads the
optimizer pod's termination and the shard pods' status, and reads/patches the resource
itself. During a rollout it lists the serving chain's shard-0 pods, whose counters
probe.py reads.

Writes use server-side apply (field manager `kubeaccel-operator`, force): a field removed
from the desired manifest is removed from the object, and a hand edit of a field the
operator owns is taken back. Requests go through the official client's ApiClient (auth,
TLS, token refresh) with raw JSON bodies, so no typed models are built or parsed.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import urllib3
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.constants import (
    GROUP,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_SHARD,
    PLURAL,
    VERSION,
)
from kubeaccel_api.routing import RoutingReport
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.chains import rollout_complete
from kubeaccel_operator.errors import ApiError, ForeignObject
from kubeaccel_operator.manifests.common import (
    MANAGED_BY,
    Chain,
    Manifest,
    chain_of_component,
    existing_claim,
    job_name,
    namespace_of,
    parse_quantity,
    shard_name,
    stable_hash,
)
from kubeaccel_operator.manifests.job import CONTAINER as OPTIMIZER_CONTAINER
from kubeaccel_operator.pods import Termination, last_termination
from kubeaccel_operator.probe import (
    ProviderReader,
    ReportReader,
    read_provider,
    read_report,
    rollout_reports,
    shard_providers,
)
from kubeaccel_operator.reconcile import (
    CHILD_KINDS,
    Observed,
    Plan,
    job_condition,
    needs_job_message,
)
from kubeaccel_operator.rollout import in_progress

FIELD_MANAGER = MANAGED_BY
# Sets an autoscaled Deployment's replicas once (at creation, or when the operator's own
# manager hands the field over), so removing it from FIELD_MANAGER's apply keeps the value
# and the autoscaler is its only writer afterwards.
SCALE_MANAGER = f"{MANAGED_BY}-replicas"
KEDA_API = "/apis/keda.sh/v1alpha1"
KEDA_CHECK_SECONDS = 60.0
ANNOTATION_APPLIED = f"{GROUP}/applied-hash"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# Immutable after creation (Job pod templates, claim specs): created, never patched.
CREATE_ONLY = frozenset({"Job", "PersistentVolumeClaim"})
TIMEOUT = (5.0, 30.0)
EVENT_MESSAGE_LIMIT = 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiResource:
    """Where a kind lives in the API."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        """URL path of the collection, or of one object (and a subresource)."""
        root = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        path = f"{root}/namespaces/{quote(namespace)}/{self.plural}"
        if name is not None:
            path += f"/{quote(name)}"
        if sub is not None:
            path += f"/{sub}"
        return path


RESOURCES: dict[str, ApiResource] = {
    "ConfigMap": ApiResource("", "v1", "configmaps"),
    "PersistentVolumeClaim": ApiResource("", "v1", "persistentvolumeclaims"),
    "Job": ApiResource("batch", "v1", "jobs"),
    "Service": ApiResource("", "v1", "services"),
    "Deployment": ApiResource("apps", "v1", "deployments"),
    "PodDisruptionBudget": ApiResource("policy", "v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ApiResource("autoscaling", "v2", "horizontalpodautoscalers"),
    "ScaledObject": ApiResource("keda.sh", "v1alpha1", "scaledobjects"),
    "NetworkPolicy": ApiResource("networking.k8s.io", "v1", "networkpolicies"),
    "Pod": ApiResource("", "v1", "pods"),
    "Event": ApiResource("", "v1", "events"),
    "AcceleratedModel": ApiResource(GROUP, VERSION, PLURAL),
}

Permission = tuple[str, str, frozenset[str]]

# kopf itself: it watches and patches the resource (progress annotations, status) and
# posts Events for warnings in logs. Resource scanning is disabled in the startup hook,
# so no CRD or namespace access is needed; kopf runs standalone, so no kopfpeerings.
FRAMEWORK_PERMISSIONS: tuple[Permission, ...] = (
    ("", "events", frozenset({"create"})),
    (GROUP, PLURAL, frozenset({"list", "watch", "patch"})),
    (GROUP, f"{PLURAL}/status", frozenset({"patch"})),
)
# The reconciler (this module) and the child-event handlers, which watch every kind of
# child (list + watch, filtered server-side by the managed-by label).
APPLICATION_PERMISSIONS: tuple[Permission, ...] = (
    # get: the owner of a changed child; list: the periodic resync.
    (GROUP, PLURAL, frozenset({"get", "list"})),
    # Transition Events (Optimizing, Optimized, Deploying, Ready, Degraded, failures).
    ("", "events", frozenset({"create"})),
    ("", "configmaps", frozenset({"get", "list", "watch", "create", "patch", "delete"})),
    # Claims are created (server-side apply: create + patch) and never changed or deleted.
    ("", "persistentvolumeclaims", frozenset({"get", "list", "watch", "create", "patch"})),
    ("batch", "jobs", frozenset({"get", "list", "watch", "create", "patch", "delete"})),
    # Read only: the optimizer pod's termination message carries the optimization
    # summary (or why it failed); shard pods say why a shard cannot start, and during a
    # rollout the serving chain's shard-0 pods give their counters. Watched, so a crash or
    # an image pull error reaches the status at once.
    ("", "pods", frozenset({"list", "watch"})),
    ("", "services", frozenset({"get", "list", "watch", "create", "patch", "delete"})),
    ("apps", "deployments", frozenset({"get", "list", "watch", "create", "patch", "delete"})),
    (
        "policy",
        "poddisruptionbudgets",
        frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ),
    # Autoscalers are not watched: an HPA rewrites its status every 15 s.
    (
        "autoscaling",
        "horizontalpodautoscalers",
        frozenset({"get", "list", "create", "patch", "delete"}),
    ),
    # Used only where KEDA is installed (discovery tells; no RBAC needed for that).
    ("keda.sh", "scaledobjects", frozenset({"get", "list", "create", "patch", "delete"})),
    # The opt-in NetworkPolicy of each shard (spec.networkPolicy).
    (
        "networking.k8s.io",
        "networkpolicies",
        frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ),
)
# Every API call the operator process makes (kopf included), for RBAC.
REQUIRED_PERMISSIONS: tuple[Permission, ...] = FRAMEWORK_PERMISSIONS + APPLICATION_PERMISSIONS
# Only with KUBEACCEL_PEERING_NAME set (several operator replicas): kopf's peering objects.
PEERING_PERMISSIONS: tuple[Permission, ...] = (
    ("kopf.dev", "kopfpeerings", frozenset({"get", "list", "watch", "patch"})),
    ("kopf.dev", "clusterkopfpeerings", frozenset({"get", "list", "watch", "patch"})),
)


@dataclass
class ApplyResult:
    """What one apply changed, by `Kind/name`."""

    created: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was written."""
        return bool(self.created or self.patched or self.deleted)


class Cluster(Protocol):
    """What the handlers need from the API (a fake implements it in tests)."""

    def observe(self, res: AcceleratedModel) -> Observed:
        """The resource's children and the facts reconcile needs."""
        ...

    def apply(self, res: AcceleratedModel, plan: Plan, observed: Observed) -> ApplyResult:
        """Make the plan's objects exist as desired and delete its orphans."""
        ...

    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The raw AcceleratedModel, or None when it is gone."""
        ...

    def patch_model_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the resource's status subresource."""
        ...

    def list_models(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        """Every AcceleratedModel in `namespaces` (empty: the whole cluster)."""
        ...

    def post_event(self, owner: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event on `owner`."""
        ...


# --------------------------------------------------------------------------- pure helpers


def contains(want: Any, have: Any) -> bool:
    """Whether `have` holds everything in `want` (extra keys are server defaults).

    Lists must match element by element; quantities compare by value, since the API
    server canonicalises them (e.g. `1000m` comes back as `1`).
    """
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            key in have and contains(value, have[key]) for key, value in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(contains(w, h) for w, h in zip(want, have, strict=True))
        )
    if want == have:
        return True
    if isinstance(want, str) and isinstance(have, str | int | float):
        a, b = parse_quantity(want), parse_quantity(str(have))
        return a is not None and a == b
    return False


def with_applied_hash(obj: Manifest) -> Manifest:
    """A copy of `obj` carrying the hash of its desired form in an annotation."""
    digest = stable_hash(obj)
    meta = dict(obj["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), ANNOTATION_APPLIED: digest}
    return {**obj, "metadata": meta}


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether `obj` has an owner reference to the resource with `uid`."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return uid is not None and any(ref.get("uid") == uid for ref in refs)


def drifted(desired: Manifest, current: Mapping[str, Any]) -> bool:
    """Whether the live object differs from the desired one (desired carries its hash).

    A changed hash catches fields the desired manifest no longer sets; the containment
    check catches hand edits of fields it does set.
    """
    meta = current.get("metadata", {})
    annotations = meta.get("annotations") or {}
    if (
        annotations.get(ANNOTATION_APPLIED)
        != desired["metadata"]["annotations"][ANNOTATION_APPLIED]
    ):
        return True
    want_meta = desired["metadata"]
    if not contains(want_meta.get("labels", {}), meta.get("labels") or {}):
        return True
    if not contains(want_meta.get("annotations", {}), annotations):
        return True
    uid = want_meta["ownerReferences"][0]["uid"]
    if not owned_by(current, uid):
        return True
    return any(
        not contains(value, current.get(key))
        for key, value in desired.items()
        if key not in ("apiVersion", "kind", "metadata")
    )


def owned_by_deployment(pod: Mapping[str, Any], deployments: Mapping[str, Manifest]) -> bool:
    """Whether a pod belongs to one of these Deployments (its ReplicaSet is named after one)."""
    for ref in pod.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "ReplicaSet" and str(ref.get("name", "")).rsplit("-", 1)[0] in (
            deployments
        ):
            return True
    return False


def rolled_out(deployment: Mapping[str, Any]) -> bool:
    """Whether a Deployment is fully rolled out to its current spec (see rollout_complete)."""
    return rollout_complete(deployment, int(deployment.get("spec", {}).get("replicas") or 0))


def owns_field(obj: Mapping[str, Any], manager: str, path: tuple[str, ...]) -> bool:
    """Whether `manager` owns the field at `path` (e.g. ("spec", "replicas")) per managedFields."""
    for entry in obj.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != manager:
            continue
        node: Any = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, Mapping) else None
        if node is not None:
            return True
    return False


def _shard_of(model: str, pod: Mapping[str, Any]) -> str | None:
    labels = pod.get("metadata", {}).get("labels") or {}
    chain = chain_of_component(labels.get(LABEL_COMPONENT))
    index = labels.get(LABEL_SHARD, "")
    return shard_name(model, int(index), chain) if chain and index.isdigit() else None


def replicas_handover(
    desired: Manifest, current: Mapping[str, Any], bounds: tuple[int, int] | None
) -> int | None:
    """Replicas SCALE_MANAGER must set on an autoscaled Deployment, or None.

    Needed when the operator's manager still owns spec.replicas (autoscaling was just
    turned on: without a second owner, applying without the field would reset it to 1)
    or when the live count is outside [minReplicas, maxReplicas] (e.g. just created).
    """
    if desired.get("kind") != "Deployment" or bounds is None or "replicas" in desired["spec"]:
        return None
    low, high = bounds
    live = current.get("spec", {}).get("replicas")
    replicas = int(live) if live is not None else 1
    wanted = min(max(replicas, low), high)
    if wanted != replicas or owns_field(current, FIELD_MANAGER, ("spec", "replicas")):
        return wanted
    return None


def _job_finished(job: Mapping[str, Any]) -> bool:
    return any(job_condition(job, ctype) is not None for ctype in ("Complete", "Failed"))


# --------------------------------------------------------------------------- client


class KubeClient:
    """Cluster implementation over the official client's ApiClient, raw JSON in and out."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        read_provider: ProviderReader | None = None,
        read_report: ReportReader | None = None,
    ) -> None:
        self.api = api
        # Reads a shard pod's execution provider from its IP; None: pods are not probed.
        self.read_provider = read_provider
        # Reads a shard-0 pod's rollout counters from its URL; None: pods are not probed.
        self.read_report = read_report
        self._keda: tuple[float, bool] | None = None

    @classmethod
    def connect(cls, config_file: str | None = None, pod_probes: str = "auto") -> KubeClient:
        """In-cluster service account when running in a pod, else the kubeconfig.

        Pods are probed (provider gauge, rollout counters) with `pod_probes` "on", or "auto"
        in a pod: only there does the operator surely reach pod IPs.
        """
        cfg = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            in_cluster = True
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(config_file=config_file, client_configuration=cfg)  # type: ignore[no-untyped-call]
            in_cluster = False
        api = kubernetes.client.ApiClient(cfg)
        if pod_probes == "on" or (pod_probes == "auto" and in_cluster):
            return cls(api, read_provider=read_provider, read_report=read_report)
        return cls(api)

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        kind: str = "",
        name: str = "",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            request = self.api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(*request, _request_timeout=TIMEOUT)
            data = response.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, f"no response: {exc}", kind=kind, name=name) from exc
        except kubernetes.client.ApiException as exc:
            raise ApiError(int(exc.status or 0), str(exc.reason), kind=kind, name=name) from exc
        if not 200 <= response.status < 300:
            raise ApiError(response.status, _error_message(data), kind=kind, name=name)
        parsed = json.loads(data) if data else {}
        return parsed if isinstance(parsed, dict) else {}

    def list_objects(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` matching the label selector."""
        path = RESOURCES[kind].path(namespace)
        items = self._request("GET", path, query=[("labelSelector", selector)], kind=kind)
        return list(items.get("items") or [])

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return self._request("GET", RESOURCES[kind].path(namespace, name), kind=kind, name=name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def server_side_apply(self, obj: Manifest, manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Create or update `obj` with server-side apply as `manager` (the operator's)."""
        kind, meta = obj["kind"], obj["metadata"]
        return self._request(
            "PATCH",
            RESOURCES[kind].path(meta["namespace"], meta["name"]),
            query=[("fieldManager", manager), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
            kind=kind,
            name=meta["name"],
        )

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (a Job's pods go too); False if already gone."""
        try:
            self._request(
                "DELETE",
                RESOURCES[kind].path(namespace, name),
                query=[("propagationPolicy", "Background")],
                kind=kind,
                name=name,
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def keda_installed(self) -> bool:
        """Whether KEDA's ScaledObject API is served (discovery, re-checked every minute)."""
        now = time.monotonic()
        if self._keda is not None and now - self._keda[0] < KEDA_CHECK_SECONDS:
            return self._keda[1]
        try:
            found = self._request("GET", KEDA_API, kind="APIResourceList")
            served = any(r.get("name") == "scaledobjects" for r in found.get("resources") or [])
        except ApiError as exc:
            if exc.status not in (404, 503):
                raise
            served = False
        self._keda = (now, served)
        return served

    def _scale(self, obj: Mapping[str, Any], replicas: int | None) -> None:
        """Set an autoscaled Deployment's replicas as SCALE_MANAGER (see replicas_handover)."""
        if replicas is None:
            return
        meta = obj["metadata"]
        self.server_side_apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": {"replicas": replicas},
            },
            manager=SCALE_MANAGER,
        )

    # ----------------------------------------------------------------- Cluster

    def observe(self, res: AcceleratedModel) -> Observed:
        """List every child kind by label; keep those owned by this resource's uid."""
        ns, name, uid = namespace_of(res), res.metadata.name, res.metadata.uid
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_MODEL}={name}"
        keda = self.keda_installed()
        objects: dict[str, dict[str, Manifest]] = {}
        for kind in CHILD_KINDS:
            if kind == "ScaledObject" and not keda:
                continue
            objects[kind] = {
                obj["metadata"]["name"]: obj
                for obj in self.list_objects(kind, ns, selector)
                if owned_by(obj, uid)
            }
        artifact = artifact_id(res.spec)
        job = job_name(name, artifact)
        terminations: dict[str, Termination] = {}
        pending = needs_job_message(res, artifact)
        observed_job = objects["Job"].get(job)
        if pending and observed_job is not None and _job_finished(observed_job):
            pods = self.list_objects("Pod", ns, f"{JOB_NAME_LABEL}={job}")
            ended = last_termination(pods, OPTIMIZER_CONTAINER)
            if ended is not None:
                terminations[job] = ended
        claim_present: bool | None = None
        claim = existing_claim(res)
        if claim is not None and pending and observed_job is None:
            claim_present = self.get("PersistentVolumeClaim", ns, claim) is not None
        shard_pods: dict[str, Manifest] = {}
        providers: dict[str, tuple[str, ...]] = {}
        deployments = objects["Deployment"]
        probing = self.read_provider is not None
        if deployments and (probing or not all(map(rolled_out, deployments.values()))):
            # Why a shard does not come up (crash loop, image pull, scheduling) is only in
            # its pods' status, and which provider it got only inside them. Pods belong to
            # ReplicaSets: they are matched by label, then by their ReplicaSet's name.
            # While every shard is rolled out there is nothing to explain: no list.
            runtime = {c.component.value for c in Chain}
            pods = self.list_objects("Pod", ns, f"{LABEL_MODEL}={name}")
            owned = [
                p
                for p in pods
                if (p["metadata"].get("labels") or {}).get(LABEL_COMPONENT) in runtime
                and owned_by_deployment(p, deployments)
            ]
            shard_pods = {p["metadata"]["name"]: p for p in owned}
            if self.read_provider is not None:
                providers = shard_providers(
                    owned, lambda pod: _shard_of(name, pod), self.read_provider
                )
        return Observed(
            objects=objects,
            terminations=terminations,
            claim_present=claim_present,
            providers=providers,
            keda=keda,
            reports=self._rollout_reports(res),
            pods=shard_pods,
        )

    def _rollout_reports(self, res: AcceleratedModel) -> tuple[RoutingReport, ...]:
        """During a rollout: the counters of every shard-0 pod of the serving chain."""
        state = res.status.rollout if res.status is not None else None
        if self.read_report is None or state is None or not in_progress(state):
            return ()
        serving = Chain(state.candidate_chain).other
        selector = (
            f"{LABEL_INSTANCE}={res.metadata.name},"
            f"{LABEL_COMPONENT}={serving.component.value},{LABEL_SHARD}=0"
        )
        return rollout_reports(
            self.list_objects("Pod", namespace_of(res), selector), self.read_report
        )

    def apply(self, res: AcceleratedModel, plan: Plan, observed: Observed) -> ApplyResult:
        """Create absent children, re-apply drifted ones, delete the plan's orphans."""
        result = ApplyResult()
        uid = res.metadata.uid
        scaling = res.spec.runtime.autoscaling
        bounds = (scaling.min_replicas, scaling.max_replicas) if scaling else None
        for obj in plan.objects:
            desired = with_applied_hash(obj)
            kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
            current: Mapping[str, Any] | None = observed.get(kind, name)
            if current is None:
                # Not among our labelled children: make sure we do not take over someone
                # else's object of the same name.
                current = self.get(kind, ns, name)
                if current is not None and not owned_by(current, uid):
                    raise ForeignObject(kind, name, res.metadata.name)
                if current is None:
                    created = self.server_side_apply(desired)
                    result.created.append(f"{kind}/{name}")
                    self._scale(created, replicas_handover(desired, created, bounds))
                    continue
            if kind not in CREATE_ONLY and drifted(desired, current):
                # Hand replicas over first: the apply below may drop the operator's claim.
                self._scale(current, replicas_handover(desired, current, bounds))
                self.server_side_apply(desired)
                result.patched.append(f"{kind}/{name}")
        for kind, name in plan.delete:
            if self.delete(kind, namespace_of(res), name):
                result.deleted.append(f"{kind}/{name}")
        return result

    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The raw AcceleratedModel, or None when it is gone."""
        return self.get("AcceleratedModel", namespace, name)

    def list_models(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        """Every AcceleratedModel in `namespaces` (empty: the whole cluster)."""
        res = RESOURCES["AcceleratedModel"]
        paths = [res.path(ns) for ns in namespaces] or [f"/apis/{GROUP}/{VERSION}/{PLURAL}"]
        items: list[dict[str, Any]] = []
        for path in paths:
            items += self._request("GET", path, kind="AcceleratedModel").get("items") or []
        return items

    def post_event(self, owner: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Record an Event on `owner` (core/v1, as kubectl describe shows them)."""
        event = event_for(owner, type, reason, message, datetime.now(UTC))
        self._request(
            "POST",
            RESOURCES["Event"].path(owner["metadata"]["namespace"]),
            body=event,
            content_type="application/json",
            kind="Event",
            name=owner["metadata"]["name"],
        )

    def patch_model_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource."""
        self._request(
            "PATCH",
            RESOURCES["AcceleratedModel"].path(namespace, name, "status"),
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
            kind="AcceleratedModel",
            name=name,
        )


def event_for(
    owner: Mapping[str, Any], type: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event about `owner` (the form `kubectl describe` shows)."""
    meta = owner["metadata"]
    stamp = now.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": owner.get("apiVersion", ""),
            "kind": owner.get("kind", ""),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": type,
        "reason": reason,
        "message": message[:EVENT_MESSAGE_LIMIT],
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "reportingInstance": socket.gethostname(),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def _error_message(data: bytes | None) -> str:
    if not data:
        return "empty response"
    try:
        parsed = json.loads(data)
    except ValueError:
        return data.decode(errors="replace")[:500]
    if isinstance(parsed, dict) and parsed.get("message"):
        return str(parsed["message"])
    return data.decode(errors="replace")[:500]
