"""kube.py: the pure apply helpers, and KubeClient over real HTTP against the emulator."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kmock_support import Api, EmulatorThread, make_available
from kubeaccel_api.v1alpha1 import AcceleratedModel
from kubeaccel_operator import kube
from kubeaccel_operator.errors import ApiError, ForeignObject
from kubeaccel_operator.manifests.deployment import build_deployment
from kubeaccel_operator.pods import Termination
from kubeaccel_operator.reconcile import Plan, reconcile
from kubeaccel_operator.settings import Settings
from operator_samples import GPU2, NAME, NOW, NS, aid, body, model

CFG = Settings()


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1Gi", Decimal(2**30)),
        ("1.5k", Decimal(1500)),
        ("x", None),
    ],
)
def test_quantities_parse_to_their_value(text: str, value: Decimal | None) -> None:
    assert kube.parse_quantity(text) == value


def test_containment_ignores_server_defaults_and_compares_quantities_by_value() -> None:
    want = {"a": [{"cpu": "1000m", "name": "c"}], "b": {"x": 1}}
    have = {
        "a": [{"cpu": "1", "name": "c", "terminationMessagePath": "/dev/x"}],
        "b": {"x": 1, "y": 2},
        "z": 0,
    }
    assert kube.contains(want, have)
    assert not kube.contains({"a": [1, 2]}, {"a": [1]})
    assert not kube.contains({"a": "2Gi"}, {"a": "1Gi"})
    assert not kube.contains({"a": {"b": 1}}, {"a": None})


def test_a_live_object_with_server_defaults_has_not_drifted_but_a_hand_edit_has() -> None:
    desired = kube.with_applied_hash(build_deployment(model(GPU2), 0, aid(GPU2), CFG))
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="x", resourceVersion="7", generation=3)
    live["spec"]["progressDeadlineSeconds"] = 600
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    container["resources"]["requests"]["cpu"] = "2000m"  # canonicalised by the server
    live["status"] = {"replicas": 2}
    assert not kube.drifted(desired, live)
    edited = copy.deepcopy(live)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert kube.drifted(desired, edited)
    unowned = copy.deepcopy(live)
    unowned["metadata"]["ownerReferences"] = []
    assert kube.drifted(desired, unowned)


def test_a_field_removed_from_the_desired_object_counts_as_drift() -> None:
    with_tol = {
        **GPU2,
        "runtime": {**GPU2["runtime"], "tolerations": [{"key": "gpu", "operator": "Exists"}]},
    }
    before = kube.with_applied_hash(build_deployment(model(with_tol), 0, aid(with_tol), CFG))
    after = kube.with_applied_hash(build_deployment(model(GPU2), 0, aid(GPU2), CFG))
    # Containment alone would miss it: everything `after` sets is still in `before`.
    assert kube.drifted(after, before)


def test_required_permissions_name_verbs_for_every_call_and_merge_cleanly() -> None:
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    seen = set()
    for group, resource, granted in kube.REQUIRED_PERMISSIONS:
        assert isinstance(group, str) and isinstance(resource, str)
        assert isinstance(granted, frozenset) and granted <= verbs and granted
        seen.add((group, resource))
    for kind, res in kube.RESOURCES.items():
        assert (res.group, res.plural) in seen, kind
    assert ("", "events") in seen


# --------------------------------------------------------------------------- against the emulator


@dataclass
class Live:
    """A KubeClient and a test client on one emulator, with the owning resource created."""

    client: kube.KubeClient
    api: Api
    uid: str


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Live]:
    with EmulatorThread() as emu:
        config = tmp_path / "kubeconfig"
        config.write_text(emu.kubeconfig())
        client = kube.KubeClient.connect(str(config))
        api = Api(emu.url)
        # The owner must exist, or the (emulated) garbage collector removes its children.
        raw = body()
        del raw["metadata"]["uid"]
        uid = api.create(raw)["metadata"]["uid"]
        try:
            yield Live(client, api, uid)
        finally:
            client.api.close()


def _plan(res: AcceleratedModel, client: kube.KubeClient) -> tuple[Plan, kube.Observed]:
    seen = client.observe(res)
    return reconcile(res, seen, CFG, NOW), seen


def test_apply_creates_children_once_and_is_idempotent(
    cluster: Live,
) -> None:
    client, api, uid = cluster.client, cluster.api, cluster.uid
    res = model(GPU2, uid=uid)
    plan, seen = _plan(res, client)
    first = client.apply(res, plan, seen)
    assert sorted(first.created) == sorted(
        f"{o['kind']}/{o['metadata']['name']}" for o in plan.objects
    )
    job = api.list("Job", NS)[0]
    assert job["metadata"]["annotations"]["kubeaccel.io/applied-hash"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    plan, seen = _plan(res, client)
    again = client.apply(res, plan, seen)
    assert not again.changed


def test_a_hand_edit_is_taken_back_and_an_orphan_is_deleted(
    cluster: Live,
) -> None:
    client, api, uid = cluster.client, cluster.api, cluster.uid
    res = model(
        GPU2, status={"optimization": {"artifactId": aid(GPU2)}}, uid=uid
    )  # artifact done: shards
    plan, seen = _plan(res, client)
    client.apply(res, plan, seen)
    api.patch("Deployment", NS, f"{NAME}-shard-0", {"spec": {"replicas": 7}})
    plan, seen = _plan(res, client)
    assert client.apply(res, plan, seen).patched == ["Deployment/mnist-shard-0"]
    deployment = api.get("Deployment", NS, f"{NAME}-shard-0")
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    one_shard = {
        **GPU2,
        "optimization": {"partition": {"shards": 1}, "quantization": {"mode": "fp16"}},
    }
    res = model(one_shard, status={"optimization": {"artifactId": aid(one_shard)}}, uid=uid)
    plan, seen = _plan(res, client)
    result = client.apply(res, plan, seen)
    assert set(result.deleted) == {
        "Deployment/mnist-shard-1",
        "Service/mnist-shard-1",
        "PodDisruptionBudget/mnist-shard-1",
    }
    assert api.get("Service", NS, f"{NAME}-shard-1") is None
    assert api.get("Deployment", NS, f"{NAME}-shard-0") is not None


def test_an_object_of_the_same_name_owned_by_someone_else_is_not_taken_over(
    cluster: Live,
) -> None:
    client, api, uid = cluster.client, cluster.api, cluster.uid
    api.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-spec", "namespace": NS},
            "data": {"mine": "yes"},
        }
    )
    res = model(uid=uid)
    plan, seen = _plan(res, client)
    with pytest.raises(ForeignObject) as err:
        client.apply(res, plan, seen)
    assert err.value.temporary
    assert "not owned by AcceleratedModel mnist" in str(err.value)
    cm = api.get("ConfigMap", NS, f"{NAME}-spec")
    assert cm is not None and cm["data"] == {"mine": "yes"}


def test_observe_keeps_only_children_of_this_uid_and_reads_the_job_message(
    cluster: Live,
) -> None:
    client, api, uid = cluster.client, cluster.api, cluster.uid
    res = model(uid=uid)
    plan, seen = _plan(res, client)
    client.apply(res, plan, seen)
    job = api.list("Job", NS)[0]
    name = job["metadata"]["name"]
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-abcde",
                "namespace": NS,
                "labels": {"batch.kubernetes.io/job-name": name},
            },
            "spec": {"containers": []},
        }
    )
    api.patch(
        "Pod",
        NS,
        f"{name}-abcde",
        {
            "status": {
                "containerStatuses": [
                    {
                        "name": "optimize",
                        "state": {
                            "terminated": {
                                "exitCode": 0,
                                "finishedAt": "2025-01-01T00:00:00Z",
                                "message": '{"artifactId": "x"}',
                            }
                        },
                    }
                ]
            }
        },
        sub="status",
    )
    api.patch(
        "Job",
        NS,
        name,
        {"status": {"conditions": [{"type": "Complete", "status": "True"}]}},
        sub="status",
    )
    stranger = copy.deepcopy(plan.objects[0])
    stranger["metadata"].update(
        name="other-spec",
        ownerReferences=[{**stranger["metadata"]["ownerReferences"][0], "uid": "another"}],
    )
    api.create(stranger)
    seen = client.observe(res)
    assert set(seen.of_kind("ConfigMap")) == {f"{NAME}-spec"}
    assert seen.terminations == {
        name: Termination(
            exit_code=0, message='{"artifactId": "x"}', finished_at="2025-01-01T00:00:00Z"
        )
    }
    assert seen.pods == {}  # no shard Deployment yet: no pods listed


def test_the_resource_is_read_and_its_status_patched(cluster: Live) -> None:
    client = cluster.client
    assert client.get_model(NS, "absent") is None
    client.patch_model_status(NS, NAME, {"phase": "Optimizing", "message": None})
    stored = client.get_model(NS, NAME)
    assert stored is not None and stored["status"] == {"phase": "Optimizing"}
    assert stored["metadata"]["uid"] == cluster.uid


def test_an_unreachable_api_server_is_a_temporary_error() -> None:
    from kubernetes.client import ApiClient, Configuration

    config = Configuration(host="http://127.0.0.1:9")  # discard port: connection refused
    client = kube.KubeClient(ApiClient(config))
    with pytest.raises(ApiError) as err:
        client.get("ConfigMap", NS, "x")
    assert err.value.status == 0 and err.value.temporary


def test_an_event_names_its_object_reason_and_source() -> None:
    owner = {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": NAME, "namespace": NS, "uid": "u-1"},
    }
    event = kube.event_for(owner, "Warning", "Degraded", "x" * 2000, NOW)
    host = event.pop("reportingInstance")
    assert isinstance(host, str) and host
    assert event == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{NAME}.", "namespace": NS},
        "involvedObject": {
            "apiVersion": "kubeaccel.io/v1alpha1",
            "kind": "AcceleratedModel",
            "name": NAME,
            "namespace": NS,
            "uid": "u-1",
        },
        "type": "Warning",
        "reason": "Degraded",
        "message": "x" * 1024,
        "source": {"component": "kubeaccel-operator"},
        "reportingComponent": "kubeaccel-operator",
        "firstTimestamp": "2025-01-02T03:04:05Z",
        "lastTimestamp": "2025-01-02T03:04:05Z",
        "count": 1,
    }


def test_events_are_posted_and_resources_listed_per_namespace_or_cluster_wide(
    cluster: Live,
) -> None:
    owner = cluster.client.get_model(NS, NAME)
    assert owner is not None
    cluster.client.post_event(owner, "Normal", "Ready", "all shards serving")
    posted = cluster.api.list("Event", NS)
    assert [(e["reason"], e["involvedObject"]["uid"]) for e in posted] == [("Ready", cluster.uid)]
    assert [m["metadata"]["name"] for m in cluster.client.list_models([NS])] == [NAME]
    assert [m["metadata"]["name"] for m in cluster.client.list_models([])] == [NAME]
    assert cluster.client.list_models(["elsewhere"]) == []


# --------------------------------------------------------------------------- autoscaling


def _deployment(replicas: int | None, owners: list[str]) -> dict[str, Any]:
    spec = {} if replicas is None else {"replicas": replicas}
    managed = [
        {"manager": m, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        for m in owners
    ]
    return {"kind": "Deployment", "metadata": {"managedFields": managed}, "spec": spec}


AUTOSCALED = {"kind": "Deployment", "spec": {"template": {}}}


@pytest.mark.parametrize(
    ("live", "owners", "bounds", "expected"),
    [
        (None, [], (2, 5), 2),  # just created: defaulted to 1, raised to minReplicas
        (3, [kube.FIELD_MANAGER], (2, 5), 3),  # autoscaling just turned on: keep the count
        (9, [kube.FIELD_MANAGER], (2, 5), 5),  # ... clamped into the new bounds
        (3, ["horizontal-pod-autoscaler"], (2, 5), None),  # the autoscaler owns it: hands off
        (1, [], (1, 5), None),
        (3, [kube.FIELD_MANAGER], None, None),  # not autoscaled
    ],
)
def test_replicas_are_handed_to_the_autoscaler_without_dropping_to_one(
    live: int | None, owners: list[str], bounds: tuple[int, int] | None, expected: int | None
) -> None:
    assert kube.replicas_handover(AUTOSCALED, _deployment(live, owners), bounds) == expected


def test_a_desired_replica_count_is_never_handed_over() -> None:
    fixed = {"kind": "Deployment", "spec": {"replicas": 2}}
    assert kube.replicas_handover(fixed, _deployment(3, [kube.FIELD_MANAGER]), (1, 5)) is None


def test_field_ownership_is_read_from_managed_fields() -> None:
    obj = _deployment(3, ["a"])
    assert kube.owns_field(obj, "a", ("spec", "replicas"))
    assert not kube.owns_field(obj, "b", ("spec", "replicas"))
    assert not kube.owns_field(obj, "a", ("spec", "template"))


def test_an_autoscaled_shard_starts_at_min_replicas_with_an_hpa_and_no_keda(cluster: Live) -> None:
    client, api, uid = cluster.client, cluster.api, cluster.uid
    spec = {
        "runtime": {"resources": {"cpu": "1"}, "autoscaling": {"minReplicas": 3, "maxReplicas": 6}}
    }
    res = model(spec, uid=uid)
    assert client.keda_installed() is False
    artifact = aid(spec)
    # Optimized already (recorded in status): the shards are created straight away.
    res = model(spec, uid=uid, status={"optimization": {"artifactId": artifact}})
    plan, seen = _plan(res, client)
    client.apply(res, plan, seen)
    deployment = api.get("Deployment", NS, f"{NAME}-shard-0")
    assert deployment is not None and deployment["spec"]["replicas"] == 3
    hpas = {o["metadata"]["name"] for o in client.list_objects("HorizontalPodAutoscaler", NS, "")}
    assert hpas == {f"{NAME}-shard-0"}
    plan, seen = _plan(res, client)
    assert not client.apply(res, plan, seen).changed


@pytest.mark.parametrize(
    ("labels", "shard"),
    [
        ({"app.kubernetes.io/component": "runtime", "kubeaccel.io/shard": "1"}, f"{NAME}-shard-1"),
        (
            {"app.kubernetes.io/component": "runtime-b", "kubeaccel.io/shard": "0"},
            f"{NAME}-b-shard-0",
        ),
        ({"app.kubernetes.io/component": "optimizer"}, None),
    ],
)
def test_a_pod_maps_to_the_shard_of_its_own_chain(
    labels: dict[str, str], shard: str | None
) -> None:
    assert kube._shard_of(NAME, {"metadata": {"labels": labels}}) == shard


def test_a_deployment_is_rolled_out_when_every_replica_of_its_current_spec_is_available() -> None:
    deployment = {"metadata": {"generation": 3}, "spec": {"replicas": 2}}

    def with_status(**status: int) -> dict[str, Any]:
        return {**deployment, "status": status}

    done = {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    assert kube.rolled_out(with_status(**done))
    # Mid-rollout: both new pods created, one old pod still available, one new one starting.
    assert not kube.rolled_out(with_status(**{**done, "replicas": 3}))
    assert not kube.rolled_out(with_status(**{**done, "observedGeneration": 2}))  # stale
    assert not kube.rolled_out(with_status(**{**done, "updatedReplicas": 1}))  # rolling
    assert not kube.rolled_out(with_status(**{**done, "availableReplicas": 1}))  # a pod down
    assert not kube.rolled_out(deployment)  # never seen by its controller


def test_shard_pods_are_read_only_while_a_shard_is_not_rolled_out(cluster: Live) -> None:
    client, api, uid = cluster.client, cluster.api, cluster.uid
    res = model(GPU2, status={"optimization": {"artifactId": aid(GPU2)}}, uid=uid)
    plan, seen = _plan(res, client)
    client.apply(res, plan, seen)
    deployment = api.get("Deployment", NS, f"{NAME}-shard-0")
    assert deployment is not None
    template = deployment["spec"]["template"]
    replica_set = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": f"{NAME}-shard-0-6d5f8",
        "uid": deployment["metadata"]["uid"],  # the emulator keeps pods whose owner it knows
        "controller": True,
    }
    for name, owners in (("mine", [replica_set]), ("stray", [])):
        api.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{NAME}-shard-0-{name}",
                    "namespace": NS,
                    "labels": template["metadata"]["labels"],
                    "ownerReferences": owners,
                },
                "spec": template["spec"],
            }
        )
    # Nothing rolled out yet: the pods are read, only those of the shard's ReplicaSets kept.
    assert set(client.observe(res).pods) == {f"{NAME}-shard-0-mine"}
    for shard in (0, 1):
        make_available(api, NS, f"{NAME}-shard-{shard}")
    # Every shard rolled out: nothing to explain, so no pods are listed.
    assert client.observe(res).pods == {}
