"""Handlers against a fake cluster adapter: status writes, Events, and the error policy."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import kopf
import pytest
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.v1alpha1 import AcceleratedModel
from kubeaccel_operator import handlers, kube
from kubeaccel_operator.errors import ApiError, ForeignObject
from kubeaccel_operator.reconcile import Observed, Plan
from kubeaccel_operator.settings import Settings, get_settings
from operator_samples import GPU2, NAME, NS, UID, body, job_complete, observed, summary

LOG = logging.getLogger("test")


class FakeCluster:
    """An in-memory Cluster: children by kind and name, the resource, recorded calls."""

    def __init__(self, model_body: dict[str, Any] | None = None) -> None:
        self.children: dict[str, dict[str, dict[str, Any]]] = {}
        self.model = copy.deepcopy(model_body)
        self.fail_apply: ApiError | None = None
        self.claim_present: bool | None = None
        self.applied: list[Plan] = []
        self.status_patches: list[Mapping[str, Any]] = []
        self.events: list[tuple[str, str, str, str]] = []  # (object, type, reason, message)
        self.reads = 0
        self.job_messages: dict[str, str] = {}

    def observe(self, res: AcceleratedModel) -> Observed:
        objs = [o for kind in self.children.values() for o in kind.values()]
        return observed(*objs, messages=self.job_messages, claim_present=self.claim_present)

    def apply(self, res: AcceleratedModel, plan: Plan, seen: Observed) -> kube.ApplyResult:
        if self.fail_apply is not None:
            raise self.fail_apply
        self.applied.append(plan)
        result = kube.ApplyResult()
        for obj in plan.objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if name not in self.children.setdefault(kind, {}):
                result.created.append(f"{kind}/{name}")
            self.children[kind][name] = copy.deepcopy(obj)
        for kind, name in plan.delete:
            self.children.get(kind, {}).pop(name, None)
            result.deleted.append(f"{kind}/{name}")
        return result

    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return copy.deepcopy(self.model)

    def list_models(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.model)] if self.model is not None else []

    def post_event(self, owner: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        self.events.append((owner["metadata"]["name"], type, reason, message))

    def patch_model_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.status_patches.append(dict(status))
        assert self.model is not None
        merged = {**self.model.get("status", {}), **status}
        self.model["status"] = {k: v for k, v in merged.items() if v is not None}


@pytest.fixture
def events(fake: FakeCluster) -> list[tuple[str, str, str, str]]:
    """Events the handlers posted: (object name, type, reason, message)."""
    return fake.events


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster(body(GPU2))
    handlers.set_cluster(cluster)
    try:
        yield cluster
    finally:
        handlers.set_cluster(None)


def handle(raw: dict[str, Any]) -> None:
    """kopf's call for `raw`, the cluster's latest version of the resource."""
    fake = handlers.get_cluster()
    assert isinstance(fake, FakeCluster)
    fake.model = copy.deepcopy(raw)
    handlers._handle(kopf.Body(raw), LOG)


def written(fake: FakeCluster, since: int = 0) -> dict[str, Any]:
    """The last status patch written after the first `since` ones ({} if none was)."""
    return dict(fake.status_patches[-1]) if len(fake.status_patches) > since else {}


def run(raw: dict[str, Any]) -> dict[str, Any]:
    """Handle `raw`; the status patch written ({} if none was)."""
    fake = handlers.get_cluster()
    assert isinstance(fake, FakeCluster)
    before = len(fake.status_patches)
    handle(raw)
    return written(fake, before)


def test_a_new_resource_gets_its_job_a_status_and_an_event(
    fake: FakeCluster, events: list[Any]
) -> None:
    status = run(body(GPU2))
    assert status["phase"] == "Optimizing"
    assert status["observedGeneration"] == 1
    assert status["endpoint"] is None  # explicit null: cleared by the merge patch
    assert set(fake.children) >= {"ConfigMap", "PersistentVolumeClaim", "Job"}
    assert [(e[1], e[2]) for e in events] == [("Normal", "Optimizing")]


def test_an_unchanged_status_is_not_written_again(fake: FakeCluster, events: list[Any]) -> None:
    raw = body(GPU2)
    for _ in range(2):  # creates the Job, then sees it pending
        raw["status"] = {k: v for k, v in run(raw).items() if v is not None}
    assert run(raw) == {}
    assert len(fake.applied) == 3


def test_an_invalid_spec_fails_permanently_with_the_field_path_in_status(
    fake: FakeCluster, events: list[Any]
) -> None:
    raw = body({"runtime": {"replicas": -1}})
    with pytest.raises(kopf.PermanentError):
        handle(raw)
    status = written(fake)
    assert status["phase"] == "Failed"
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False" and validated["reason"] == "InvalidSpec"
    assert validated["message"].startswith("spec.runtime.replicas:")
    assert fake.applied == []
    assert [(e[1], e[2]) for e in events] == [("Warning", "InvalidSpec")]


def test_s3_storage_is_reconciled_like_a_claim(fake: FakeCluster, events: list[Any]) -> None:
    status = run(body({"storage": {"type": "s3", "s3": {"bucket": "models"}}}))
    kinds = [obj["kind"] for obj in fake.applied[-1].objects]
    assert "Job" in kinds and "PersistentVolumeClaim" not in kinds
    assert status["phase"] == "Optimizing"


@pytest.mark.parametrize("status", [0, 409, 429, 500, 503])
def test_conflicts_and_server_errors_retry_later_without_a_status_write(
    fake: FakeCluster, events: list[Any], status: int
) -> None:
    fake.fail_apply = ApiError(status, "boom", kind="Job", name="x")
    with pytest.raises(kopf.TemporaryError) as err:
        handle(body(GPU2))
    assert err.value.delay == get_settings().retry_delay
    assert fake.status_patches == []
    assert events == []


def test_a_foreign_object_in_the_way_is_retried(fake: FakeCluster, events: list[Any]) -> None:
    fake.fail_apply = ForeignObject("Service", NAME, NAME)
    with pytest.raises(kopf.TemporaryError, match="not owned by AcceleratedModel"):
        handle(body(GPU2))


def test_a_rejected_manifest_fails_permanently_and_says_so_in_status(
    fake: FakeCluster, events: list[Any]
) -> None:
    fake.fail_apply = ApiError(
        422, "spec.tolerations[0].key: Invalid value", kind="Deployment", name="d"
    )
    with pytest.raises(kopf.PermanentError):
        handle(body(GPU2))
    validated = written(fake)["conditions"][0]
    assert validated["reason"] == "ManifestRejected"
    assert "spec.tolerations[0].key: Invalid value" in validated["message"]


def test_a_missing_claim_applies_what_it_can_writes_status_then_retries(
    fake: FakeCluster, events: list[Any]
) -> None:
    fake.claim_present = False
    with pytest.raises(kopf.TemporaryError, match="shared"):
        handle(body({"storage": {"pvc": {"claimName": "shared"}}}))
    assert written(fake)["phase"] == "Optimizing"
    assert set(fake.children) == {"ConfigMap"}


def test_a_resource_being_deleted_is_left_to_garbage_collection(
    fake: FakeCluster, events: list[Any]
) -> None:
    raw = body(GPU2)
    raw["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert run(raw) == {}
    assert fake.applied == [] and events == []


def test_a_child_event_reconciles_the_owner_and_writes_its_status(
    fake: FakeCluster, events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "_STARTED", time.monotonic())  # the operator just started
    child = {"metadata": {"name": "mnist-shard-0", "namespace": NS, "ownerReferences": [
        {"apiVersion": "kubeaccel.io/v1alpha1", "kind": "AcceleratedModel", "name": NAME, "uid": UID, "controller": True}
    ]}}  # fmt: skip
    handlers.on_child_event(type="MODIFIED", body=kopf.Body(child), logger=LOG)
    assert fake.reads == 1
    assert fake.status_patches[-1]["phase"] == "Optimizing"
    assert [(e[0], e[2]) for e in events] == [(NAME, "Optimizing")]
    handlers.on_child_event(type=None, body=kopf.Body(child), logger=LOG)  # initial listing
    assert fake.reads == 1


def test_a_child_event_for_a_deleted_owner_does_nothing(
    fake: FakeCluster, events: list[Any]
) -> None:
    fake.model = None
    handlers.reconcile_owner(NS, NAME, LOG)
    assert fake.applied == [] and fake.status_patches == []


def test_owner_of_reads_only_the_controlling_accelerated_model() -> None:
    ref = {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "name": "m",
        "controller": True,
    }
    assert handlers.owner_of({"metadata": {"namespace": "ns", "ownerReferences": [ref]}}) == (
        "ns",
        "m",
    )
    not_controller = {**ref, "controller": False}
    assert (
        handlers.owner_of({"metadata": {"namespace": "ns", "ownerReferences": [not_controller]}})
        is None
    )
    other = {**ref, "apiVersion": "apps/v1", "kind": "ReplicaSet"}
    assert handlers.owner_of({"metadata": {"namespace": "ns", "ownerReferences": [other]}}) is None
    assert handlers.owner_of({"metadata": {}}) is None


def test_child_events_arriving_while_one_is_queued_are_coalesced(
    fake: FakeCluster, events: list[Any]
) -> None:
    key = (NS, NAME)
    with handlers._serialised(key):  # a reconcile of this resource is running
        first = threading.Thread(target=handlers.reconcile_owner, args=(NS, NAME, LOG))
        first.start()
        deadline = time.monotonic() + 5
        while key not in handlers._queued and time.monotonic() < deadline:
            time.sleep(0.001)
        assert key in handlers._queued
        handlers.reconcile_owner(NS, NAME, LOG)  # returns at once: already queued
        handlers.reconcile_owner(NS, NAME, LOG)
    first.join(5)
    assert fake.reads == 1


def test_resync_reconciles_every_resource_it_lists(fake: FakeCluster, events: list[Any]) -> None:
    assert handlers.resync((), LOG) == 1
    assert fake.status_patches[-1]["phase"] == "Optimizing"
    fake.model = None
    assert handlers.resync((NS,), LOG) == 0


def test_an_event_that_cannot_be_posted_does_not_fail_the_reconcile(fake: FakeCluster) -> None:
    def refuse(*_: Any) -> None:
        raise ApiError(403, "events is forbidden")

    fake.post_event = refuse  # type: ignore[method-assign]
    assert run(body(GPU2))["phase"] == "Optimizing"


def test_a_contract_edit_that_contradicts_the_model_fails_and_leaves_the_shards_alone(
    fake: FakeCluster, events: list[Any]
) -> None:
    raw = body({"inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 784]}]})
    recorded = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
    }
    spec = AcceleratedModel.model_validate(raw).spec
    raw["status"] = {
        "phase": "Ready",
        "optimization": {"artifactId": artifact_id(spec), "contract": recorded},
    }
    with pytest.raises(kopf.PermanentError):
        handle(raw)
    status = written(fake)
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["reason"] == "ContractMismatch"
    assert "spec.inputs lacks model input(s): x" in validated["message"]
    assert "spec.inputs[0] (pixels): the model has no such tensor (has: x)" in validated["message"]
    assert status["optimization"]["contract"] == recorded  # the record stays
    assert fake.applied == []
    assert [(e[1], e[2]) for e in events] == [("Warning", "ContractMismatch")]


def test_resources_rolling_out_are_remembered_for_the_poll_until_their_verdict() -> None:
    from datetime import UTC, datetime

    from kubeaccel_api.v1alpha1 import AcceleratedModelStatus, RolloutStatus

    rollout = RolloutStatus(
        strategy="shadow",
        phase="Shadowing",
        candidate_artifact_id="c",
        baseline_artifact_id="b",
        candidate_chain="b",
        generation=1,
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
    )
    key = (NS, "rolling")
    handlers._track_rollout(key, handlers.Result(AcceleratedModelStatus(rollout=rollout)))
    assert key in handlers.rolling_out()
    handlers._track_rollout(key, handlers.Result(None))  # no status written: no news
    assert key in handlers.rolling_out()
    done = rollout.model_copy(update={"phase": "Promoted"})
    handlers._track_rollout(key, handlers.Result(AcceleratedModelStatus(rollout=done)))
    assert key not in handlers.rolling_out()


def test_a_shard_pod_event_reconciles_the_model_its_labels_name() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {
            "namespace": "ns",
            "labels": {
                "app.kubernetes.io/managed-by": "kubeaccel-operator",
                "kubeaccel.io/model": "m",
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "m-x"}],
        },
    }
    assert handlers.owner_of(pod) == ("ns", "m")
    foreign = {**pod, "metadata": {**pod["metadata"], "labels": {"kubeaccel.io/model": "m"}}}
    assert handlers.owner_of(foreign) is None
    not_a_pod = {**pod, "kind": "ConfigMap"}
    assert handlers.owner_of(not_a_pod) is None


def test_a_listing_is_a_relist_only_after_startup() -> None:
    assert not handlers.relisted(None, 1.0)  # the startup listing: resume covers it
    assert handlers.relisted(None, handlers.STARTUP_LISTING_S + 1)
    assert not handlers.relisted("MODIFIED", handlers.STARTUP_LISTING_S + 1)


def test_a_child_event_that_meets_an_api_outage_is_retried_until_it_gets_through(
    fake: FakeCluster, events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "get_settings", lambda: Settings(retry_delay=0.05))
    failures = [ApiError(0, "no response"), ApiError(503, "apiserver is starting")]
    read = fake.get_model

    def flaky_read(namespace: str, name: str) -> dict[str, Any] | None:
        if failures:
            raise failures.pop(0)
        return read(namespace, name)

    fake.get_model = flaky_read  # type: ignore[method-assign]
    handlers.reconcile_owner(NS, NAME, LOG)
    assert fake.status_patches == []
    deadline = time.monotonic() + 10
    while not fake.status_patches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.status_patches[-1]["phase"] == "Optimizing"
    assert failures == [] and fake.reads == 1


def test_a_status_that_cannot_be_written_is_written_on_the_retry(
    fake: FakeCluster, events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "get_settings", lambda: Settings(retry_delay=0.05))
    write = fake.patch_model_status
    refused: list[Mapping[str, Any]] = []

    def flaky_write(namespace: str, name: str, status: Mapping[str, Any]) -> None:
        if not refused:
            refused.append(status)
            raise ApiError(0, "connection reset")
        write(namespace, name, status)

    fake.patch_model_status = flaky_write  # type: ignore[method-assign]
    handlers.reconcile_owner(NS, NAME, LOG)
    deadline = time.monotonic() + 10
    while not fake.status_patches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert refused and fake.status_patches[-1]["phase"] == "Optimizing"


def test_a_permanent_failure_is_not_retried(
    fake: FakeCluster, events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "get_settings", lambda: Settings(retry_delay=60))
    fake.fail_apply = ApiError(422, "Invalid value", kind="Deployment", name="d")
    handlers.reconcile_owner(NS, NAME, LOG)
    assert not handlers._retrying  # a retry would have been scheduled before returning
    assert fake.reads == 1


# The same model re-optimized differently: a new artifact, rolled over the running one.
OPT2 = {**GPU2, "optimization": {"partition": {"shards": 2}, "quantization": {"mode": "auto"}}}


class Killed(BaseException):
    """The operator process died (SIGKILL, OOM, node loss) in the middle of an apply."""


class DyingCluster(FakeCluster):
    """A FakeCluster whose operator dies after `writes_left` more writes (-1: never)."""

    def __init__(self, model_body: dict[str, Any], writes_left: int = -1) -> None:
        super().__init__(model_body)
        self.writes_left = writes_left
        self.died = False
        self.writes = 0
        self.creations: list[str] = []

    def _write(self) -> None:
        if self.writes_left == 0:
            self.writes_left = -1  # it comes back, and does not die twice
            self.died = True
            raise Killed()
        if self.writes_left > 0:
            self.writes_left -= 1
        self.writes += 1

    def apply(self, res: AcceleratedModel, plan: Plan, seen: Observed) -> kube.ApplyResult:
        result = kube.ApplyResult()
        for obj in plan.objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            current = self.children.get(kind, {}).get(name)
            if current is not None and (kind == "Job" or current == obj):
                continue  # unchanged (a Job is created once and never patched)
            self._write()
            if current is None:
                self.creations.append(f"{kind}/{name}")
                result.created.append(f"{kind}/{name}")
            self.children.setdefault(kind, {})[name] = copy.deepcopy(obj)
        for kind, name in plan.delete:
            self._write()
            self.children.get(kind, {}).pop(name, None)
            result.deleted.append(f"{kind}/{name}")
        self.applied.append(plan)
        return result

    def settle(self) -> None:
        """Reconcile until nothing changes, surviving a death (the restart resumes)."""
        for _ in range(6):
            try:
                handlers.reconcile_owner(NS, NAME, LOG)
            except Killed:
                continue

    def finish_jobs(self) -> None:
        """The Job controller and kubelet: every Job completes with its summary."""
        for name, job in self.children.get("Job", {}).items():
            self.children["Job"][name] = job_complete(job)
            self.job_messages[name] = summary(job["metadata"]["labels"]["kubeaccel.io/artifact-id"])

    def names(self) -> dict[str, set[str]]:
        return {kind: set(objs) for kind, objs in self.children.items() if objs}


def changed_to_opt2(cluster: DyingCluster) -> None:
    """GPU2 optimized and deployed, then the spec changed to a new artifact (OPT2)."""
    cluster.settle()
    cluster.finish_jobs()
    cluster.settle()
    assert cluster.model is not None
    cluster.model["spec"] = body(OPT2)["spec"]
    cluster.model["metadata"]["generation"] = 2


def opt2_optimized(cluster: DyingCluster) -> None:
    """... and the new artifact's Job has just completed: the shards roll next."""
    changed_to_opt2(cluster)
    cluster.settle()
    cluster.finish_jobs()


@pytest.fixture
def dying() -> Iterator[list[DyingCluster]]:
    made: list[DyingCluster] = []
    yield made
    handlers.set_cluster(None)


def _run_with_death(
    made: list[DyingCluster], prepare: Callable[[DyingCluster], None], writes: int
) -> DyingCluster:
    cluster = DyingCluster(body(GPU2))
    made.append(cluster)
    handlers.set_cluster(cluster)
    prepare(cluster)
    cluster.writes_left, cluster.writes = writes, 0
    cluster.settle()
    return cluster


@pytest.mark.parametrize(
    "prepare",
    [lambda c: None, changed_to_opt2, opt2_optimized],
    ids=["before the Job exists", "new artifact: its Job, the old one deleted", "mid-rollout"],
)
def test_the_operator_killed_after_any_write_converges_without_duplicates(
    dying: list[DyingCluster], prepare: Callable[[DyingCluster], None]
) -> None:
    reference = _run_with_death(dying, prepare, writes=-1)
    assert reference.writes > 0
    for k in range(reference.writes):
        cluster = _run_with_death(dying, prepare, writes=k)
        assert cluster.died
        assert cluster.names() == reference.names(), f"died after write {k}"
        assert len(cluster.creations) == len(set(cluster.creations)), cluster.creations
        artifacts = [
            j["metadata"]["labels"]["kubeaccel.io/artifact-id"]
            for j in cluster.children.get("Job", {}).values()
        ]
        assert len(artifacts) == len(set(artifacts)) == 1  # one Job, of the current artifact


def test_a_child_seen_in_a_relist_after_startup_reconciles_its_owner(
    fake: FakeCluster, events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "_STARTED", time.monotonic() - handlers.STARTUP_LISTING_S - 1)
    child = {"metadata": {"name": "mnist-shard-0", "namespace": NS, "ownerReferences": [
        {"apiVersion": "kubeaccel.io/v1alpha1", "kind": "AcceleratedModel", "name": NAME, "uid": UID, "controller": True}
    ]}}  # fmt: skip
    handlers.on_child_event(type=None, body=kopf.Body(child), logger=LOG)
    assert fake.reads == 1 and fake.status_patches[-1]["phase"] == "Optimizing"


def test_the_handler_reconciles_the_latest_version_not_the_events_copy(
    fake: FakeCluster, events: list[Any]
) -> None:
    stale = body(GPU2)
    run(stale)  # creates the Job, writes the status, posts Optimizing
    assert fake.model is not None and fake.model["status"]["phase"] == "Optimizing"
    posted = len(events)
    # kopf's copy of the body predates that status (say, it queued behind that reconcile).
    handlers._handle(kopf.Body(stale), LOG)
    assert len(events) == posted, "it reconciled the stale copy: Optimizing posted twice"
