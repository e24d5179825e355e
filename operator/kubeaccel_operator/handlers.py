"""kopf handlers: thin adapters from kopf to reconcile() and kube.

One function serves create, update and resume (resume re-observes everything after a
restart). Every kind of child is watched too (server-side filtered by our managed-by
label): a finished Job, a Deployment losing availability, a child edited or deleted by
hand re-runs the owner's reconcile at once, so drift is repaired without a spec change.
The shard pods are watched the same way (read only), so a crash loop or an image that
cannot be pulled reaches the resource's status as soon as the kubelet reports it.

There is deliberately no @kopf.timer: kopf 1.45 gives every timer/daemon a finalizer
(requires_finalizer=True in kopf.on.timer), and without one a timer outlives its deleted
object. A finalizer would leave resources Terminating whenever the operator is down,
while children need nothing but their owner references to be garbage-collected. The
periodic re-observation is `resync_forever`, a plain thread `__main__` starts; resources
whose shadow/canary rollout awaits its verdict are re-checked more often by
`poll_rollouts_forever` (their counters live in the pods, not in any watched object).

All reconciles of one resource are serialised by a lock, and child events arriving
while one is queued are coalesced into it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kubeaccel_api.constants import (
    GROUP,
    KIND,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    PLURAL,
    VERSION,
)
from kubeaccel_api.v1alpha1 import AcceleratedModelStatus
from kubeaccel_api.validation import InvalidResource, parse_resource
from pydantic import ValidationError

from kubeaccel_operator import kube
from kubeaccel_operator.errors import ApiError, InvalidSpec, NotReady, OperatorError, raise_for_kopf
from kubeaccel_operator.events import Event
from kubeaccel_operator.manifests.common import MANAGED_BY, Chain
from kubeaccel_operator.reconcile import check_supported, invalid_status, reconcile
from kubeaccel_operator.rollout import in_progress
from kubeaccel_operator.settings import OWNED_KINDS, WATCHED_PODS, Settings, get_settings

# Listing events this long after start are re-lists (see `relisted`).
STARTUP_LISTING_S = 60.0
_STARTED = time.monotonic()
_cluster: kube.Cluster | None = None
_cluster_lock = threading.Lock()
_locks: dict[tuple[str, str], threading.Lock] = {}
_queued: set[tuple[str, str]] = set()
# Resources whose rollout is waiting for its verdict (rebuilt by resume after a restart).
_rolling: set[tuple[str, str]] = set()
_retrying: set[tuple[str, str]] = set()
_registry_lock = threading.Lock()


def set_cluster(cluster: kube.Cluster | None) -> None:
    """Use `cluster` for every API call (tests inject a fake; None reconnects lazily)."""
    global _cluster
    with _cluster_lock:
        _cluster = cluster


def get_cluster() -> kube.Cluster:
    """The process-wide API adapter, connected on first use."""
    global _cluster
    with _cluster_lock:
        if _cluster is None:
            _cluster = kube.KubeClient.connect(pod_probes=get_settings().pod_probes)
        return _cluster


@contextmanager
def _serialised(key: tuple[str, str]) -> Iterator[None]:
    with _registry_lock:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        yield


@dataclass(frozen=True)
class Result:
    """What one reconcile of one resource produced."""

    status: AcceleratedModelStatus | None
    events: tuple[Event, ...] = ()
    error: OperatorError | None = None
    applied: kube.ApplyResult | None = None


def _old_status(body: Mapping[str, Any]) -> AcceleratedModelStatus | None:
    raw = body.get("status")
    if not raw:
        return None
    try:
        return AcceleratedModelStatus.model_validate(raw)
    except ValidationError:
        return None  # written by someone else: rebuilt from scratch


def reconcile_body(
    body: Mapping[str, Any], cluster: kube.Cluster, cfg: Settings, now: datetime
) -> Result:
    """Validate, observe, reconcile and apply one resource body."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Result(None)  # garbage collection removes the children
    old = _old_status(body)
    generation = meta.get("generation")
    try:
        res = parse_resource({k: v for k, v in body.items() if k != "status"})
        res = res.model_copy(update={"status": old})
        check_supported(res)
    except InvalidResource as exc:
        invalid = InvalidSpec(exc.problems)
        status, events = invalid_status(old, invalid, generation, now)
        return Result(status, events, invalid)
    except InvalidSpec as exc:
        status, events = invalid_status(old, exc, generation, now)
        return Result(status, events, exc)
    try:
        observed = cluster.observe(res)
        plan = reconcile(res, observed, cfg, now)
        applied = cluster.apply(res, plan, observed)
    except ApiError as exc:
        if exc.temporary:
            return Result(None, error=exc)
        rejected = InvalidSpec([f"rejected by the API server: {exc}"], reason="ManifestRejected")
        status, events = invalid_status(old, rejected, generation, now)
        return Result(status, events, rejected)
    error = NotReady(plan.waiting) if plan.waiting else None
    return Result(plan.status, plan.events, error, applied)


def _track_rollout(key: tuple[str, str], result: Result) -> None:
    """Remember whether the resource's rollout still waits for its verdict."""
    if result.status is None:
        return
    with _registry_lock:
        if in_progress(result.status.rollout):
            _rolling.add(key)
        else:
            _rolling.discard(key)


def rolling_out() -> list[tuple[str, str]]:
    """(namespace, name) of every resource whose rollout awaits its verdict."""
    with _registry_lock:
        return sorted(_rolling)


def status_patch(result: Result, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that makes .status equal the result's status, or None if it does."""
    if result.status is None:
        return None
    wire = result.status.to_wire()
    if wire == (body.get("status") or {}):
        return None
    # Explicit nulls remove fields that no longer apply (merge-patch semantics).
    cleared: dict[str, Any] = {
        f.alias or name: None for name, f in AcceleratedModelStatus.model_fields.items()
    }
    return {**cleared, **wire}


def _post(
    cluster: kube.Cluster,
    body: Mapping[str, Any],
    result: Result,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    if result.applied is not None and result.applied.changed:
        logger.info(
            "applied children: created=%s patched=%s deleted=%s",
            result.applied.created,
            result.applied.patched,
            result.applied.deleted,
        )
    for event in result.events:
        try:
            cluster.post_event(body, event.type, event.reason, event.message)
        except ApiError as exc:  # Events are best effort; status carries the same facts
            logger.debug("could not post %s Event: %s", event.reason, exc)


def _reconcile_latest(
    key: tuple[str, str],
    cluster: kube.Cluster,
    cfg: Settings,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> tuple[Mapping[str, Any] | None, Result | None, ApiError | None]:
    """Read the resource's latest version, reconcile it and write its status; called under
    the resource's lock. Returns (body, result, failure); body None: it is gone.

    Both the read and the write belong under the lock. An event's copy of the body may
    predate a status another reconcile wrote while this one waited; and a status returned
    to kopf is written only after the handler, when the next reconcile may already have
    read the old one (it then saw a promotion's children with the status from before it,
    took the rollout for one the spec no longer asks for, and dropped its record).
    """
    namespace, name = key
    try:
        body = cluster.get_model(namespace, name)
    except ApiError as exc:
        logger.warning("cannot read AcceleratedModel %s/%s: %s", namespace, name, exc)
        return None, None, exc
    if body is None:
        with _registry_lock:
            _rolling.discard(key)
        return None, None, None
    result = reconcile_body(body, cluster, cfg, datetime.now(UTC).replace(microsecond=0))
    _track_rollout(key, result)
    update = status_patch(result, body)
    if update is not None:
        try:
            cluster.patch_model_status(namespace, name, update)
        except ApiError as exc:
            logger.warning("cannot write status of %s/%s: %s", namespace, name, exc)
            return body, result, exc
    return body, result, None


def _handle(body: kopf.Body, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    cfg = get_settings()
    cluster = get_cluster()
    key = (body.metadata.namespace or "", body.metadata.name or "")
    with _serialised(key):
        latest, result, failure = _reconcile_latest(key, cluster, cfg, logger)
    if latest is not None and result is not None:
        _post(cluster, latest, result, logger)
    if failure is not None:
        raise_for_kopf(failure, delay=cfg.retry_delay)
    if result is not None and result.error is not None:
        raise_for_kopf(result.error, delay=cfg.retry_delay)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def on_change(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """Create, update and resume: reconcile the resource and write its status."""
    _handle(body, logger)


def owner_of(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the AcceleratedModel controlling a child, if any.

    A shard pod belongs to a ReplicaSet; its model is named by the labels its Deployment
    gave it (a pod someone else labelled so only costs one needless reconcile).
    """
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        ours = ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/")
        if ours and ref.get("controller"):
            return meta.get("namespace") or "", str(ref.get("name"))
    labels = meta.get("labels") or {}
    if body.get("kind") == "Pod" and labels.get(LABEL_MANAGED_BY) == MANAGED_BY:
        model = labels.get(LABEL_MODEL)
        if model:
            return meta.get("namespace") or "", str(model)
    return None


def reconcile_owner(
    namespace: str, name: str, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """Re-run the owner's reconcile after a child changed; coalesces bursts of events.

    A temporary API failure (the API server restarting, a dropped connection) schedules
    the same reconcile again after KUBEACCEL_RETRY_DELAY: the child event that asked for
    it will not come again.
    """
    key = (namespace, name)
    with _registry_lock:
        if key in _queued:
            return  # a reconcile that has not started yet will see this change too
        _queued.add(key)
    cfg = get_settings()
    cluster = get_cluster()
    with _serialised(key):
        with _registry_lock:
            _queued.discard(key)
        body, result, failure = _reconcile_latest(key, cluster, cfg, logger)
    if body is not None and result is not None:
        _post(cluster, body, result, logger)
    if failure is not None:
        _retry_later(key, failure, cfg.retry_delay, logger)
    error = result.error if result is not None else None
    if error is not None and not isinstance(error, InvalidSpec | NotReady):
        logger.warning("reconcile of %s/%s failed: %s", namespace, name, error)
        _retry_later(key, error, cfg.retry_delay, logger)


def _retry_later(
    key: tuple[str, str],
    error: OperatorError,
    delay: float,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Reconcile `key` again after `delay` if `error` can heal (one pending retry per key)."""
    if not isinstance(error, ApiError) or not error.temporary:
        return  # the next change or the periodic resync will try again
    with _registry_lock:
        if key in _retrying:
            return
        _retrying.add(key)

    def again() -> None:
        with _registry_lock:
            _retrying.discard(key)
        reconcile_owner(*key, logger)

    timer = threading.Timer(delay, again)
    timer.daemon = True
    timer.start()


def resync(namespaces: tuple[str, ...], logger: logging.Logger) -> int:
    """Reconcile every resource once; returns how many were seen."""
    names = [
        (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        for obj in get_cluster().list_models(namespaces)
    ]
    for namespace, name in names:
        reconcile_owner(namespace, name, logger)
    return len(names)


def resync_forever(stop: threading.Event) -> None:
    """Every KUBEACCEL_RESYNC_SECONDS, reconcile everything (a safety net for lost events)."""
    cfg = get_settings()
    logger = logging.getLogger("kubeaccel_operator.resync")
    while not stop.wait(cfg.resync_seconds):
        try:
            count = resync(cfg.namespaces, logger)
        except ApiError as exc:
            logger.warning("resync failed, retrying at the next interval: %s", exc)
        else:
            logger.debug("resync reconciled %d resource(s)", count)


def poll_rollouts_forever(stop: threading.Event) -> None:
    """Every KUBEACCEL_ROLLOUT_POLL_SECONDS, reconcile the resources that are rolling out."""
    cfg = get_settings()
    logger = logging.getLogger("kubeaccel_operator.rollout")
    while not stop.wait(cfg.rollout_poll_seconds):
        for namespace, name in rolling_out():
            try:
                reconcile_owner(namespace, name, logger)
            except ApiError as exc:
                logger.warning("rollout check of %s/%s failed: %s", namespace, name, exc)


def relisted(type: str | None, uptime_s: float) -> bool:
    """Whether a listing event (type None) comes from a re-list rather than startup.

    kopf lists again when a watch cannot resume (410 Gone after an API server restart,
    connection errors while listing); what changed while the watch was down only shows
    up in that listing. At startup, on_change(resume) already reconciles every owner.
    """
    return type is None and uptime_s > STARTUP_LISTING_S


def on_child_event(type: str | None, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """A child changed (status, hand edit, deletion, or seen in a re-list): reconcile its owner."""
    if type is None and not relisted(type, time.monotonic() - _STARTED):
        return  # the initial listing at startup: on_change(resume) covers every owner
    owner = owner_of(body)
    if owner is not None:
        reconcile_owner(*owner, logger)


# Every kind of child the operator creates (settings.OWNED_KINDS, the same list the startup
# hook gives server-side label selectors).
for _group, _version, _plural in OWNED_KINDS:
    kopf.on.event(_group, _version, _plural, labels={LABEL_MANAGED_BY: MANAGED_BY})(on_child_event)
_SHARD_COMPONENTS = frozenset(chain.component.value for chain in Chain)


def _is_shard_component(value: str | None, **_: Any) -> bool:
    return value in _SHARD_COMPONENTS


# Shard pods of either chain only (the optimizer's Job reports through the Job itself).
kopf.on.event(
    *WATCHED_PODS,
    labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: _is_shard_component},
)(on_child_event)
