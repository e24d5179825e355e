"""reconcile() through whole shadow/canary rollouts and with autoscaling, step by step.

A tiny in-memory world plays the API server and the controllers: it keeps what each plan
applies, removes what it deletes, completes Jobs and makes Deployments available when
the test says so, and feeds the shard-0 reports of the serving chain back in.
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

from kubeaccel_api.routing import (
    ChainCounters,
    OutputCounters,
    RoutingReport,
    ShadowCounters,
)
from kubeaccel_api.v1alpha1 import AcceleratedModel, AcceleratedModelStatus
from kubeaccel_operator.pods import Termination
from kubeaccel_operator.reconcile import CHILD_KINDS, Observed, Plan, reconcile
from kubeaccel_operator.rollout import in_progress
from kubeaccel_operator.settings import Settings
from operator_samples import NAME, NOW, NS, aid, deep_merge, model, summary

CFG = Settings()
BASE: dict[str, Any] = {
    "optimization": {"accuracyBudget": {"minTop1Agreement": 0.95, "maxAbsDiff": 0.5}},
    "rollout": {
        "strategy": "shadow",
        "shadow": {"mirrorPercent": 50, "minRequests": 10, "maxDurationSeconds": 300},
        "readyTimeoutSeconds": 120,
    },
}
NEW = deep_merge(BASE, {"optimization": {"quantization": {"mode": "dynamic-int8"}}})
THIRD = deep_merge(BASE, {"optimization": {"quantization": {"mode": "fp16"}}})
CANARY = deep_merge(
    BASE,
    {
        "rollout": {
            "strategy": "canary",
            "shadow": None,
            "canary": {"steps": [10, 50], "stepIntervalSeconds": 30, "minRequests": 5},
        }
    },
)
CANARY_NEW = deep_merge(CANARY, {"optimization": {"quantization": {"mode": "dynamic-int8"}}})


def at(seconds: float) -> Any:
    return NOW + timedelta(seconds=seconds)


class World:
    """The API server and controllers, as far as reconcile can tell."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.generation = 1
        self.status: AcceleratedModelStatus | None = None
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.terminations: dict[str, Termination] = {}
        self.keda = False

    def res(self) -> AcceleratedModel:
        return model(self.spec, status=self.status, generation=self.generation)

    def seen(self, reports: tuple[RoutingReport, ...] = ()) -> Observed:
        by_kind: dict[str, dict[str, Any]] = {kind: {} for kind in CHILD_KINDS}
        for (kind, name), obj in self.objects.items():
            by_kind[kind][name] = copy.deepcopy(obj)
        return Observed(
            objects=by_kind, terminations=dict(self.terminations), keda=self.keda, reports=reports
        )

    def step(self, seconds: float, *reports: RoutingReport) -> Plan:
        plan = reconcile(self.res(), self.seen(tuple(reports)), CFG, at(seconds))
        for obj in plan.objects:
            key = (obj["kind"], obj["metadata"]["name"])
            old = self.objects.get(key)
            unchanged = old is not None and {k: v for k, v in old.items() if k != "status"} == obj
            if not unchanged:
                self.objects[key] = copy.deepcopy(obj)  # new or rolled: no status yet
        for key in plan.delete:
            self.objects.pop(key, None)
        self.status = AcceleratedModelStatus.model_validate(plan.status.to_wire())  # as stored
        return plan

    def change(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.generation += 1

    def finish_jobs(self) -> None:
        for (kind, name), obj in self.objects.items():
            if kind == "Job" and "status" not in obj:
                obj["status"] = {
                    "succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True"}],
                }
                artifact = obj["metadata"]["labels"]["kubeaccel.io/artifact-id"]
                self.terminations[name] = Termination(message=summary(artifact))

    def available(self, replicas: int | None = None) -> None:
        for (kind, _), obj in self.objects.items():
            if kind != "Deployment":
                continue
            count = replicas or obj["spec"].get("replicas", 1)
            obj["status"] = {
                "observedGeneration": 1,
                "replicas": count,
                "updatedReplicas": count,
                "availableReplicas": count,
            }
            # The API server defaults replicas; an autoscaler sets it.
            obj["spec"]["replicas"] = count

    def names(self, kind: str) -> set[str]:
        return {name for k, name in self.objects if k == kind}

    def routing(self) -> dict[str, Any]:
        cm = self.objects[("ConfigMap", f"{NAME}-routing")]
        doc: dict[str, Any] = json.loads(cm["data"]["routing.json"])
        return doc


def ready_world(spec: dict[str, Any]) -> World:
    """A resource whose first artifact serves from chain a."""
    world = World(spec)
    world.step(0)
    world.finish_jobs()
    world.step(1)
    world.available()
    plan = world.step(2)
    assert plan.status.phase.value == "Ready", plan.status
    return world


def shadow(compared: int, agreed: int, rid: str, max_diff: float = 0.01) -> RoutingReport:
    return RoutingReport(
        id=rid,
        mode="shadow",
        shadow=ShadowCounters(
            mirrored=compared,
            compared=compared,
            top1_compared=compared,
            top1_agreed=agreed,
            outputs={"y": OutputCounters(max_abs_diff=max_diff, abs_diff_sum=1, abs_ref_sum=100)},
        ),
    )


def condition(plan: Plan, ctype: str) -> tuple[str, str, str]:
    cond = next(c for c in plan.status.conditions if c.type.value == ctype)
    return cond.status.value, cond.reason, cond.message


def reasons(plan: Plan) -> list[str]:
    return [f"{e.type}/{e.reason}" for e in plan.events]


def rolling_to_new(spec: dict[str, Any] = NEW, base: dict[str, Any] = BASE) -> World:
    """Serving BASE; `spec` optimized and its candidate created (not yet available)."""
    world = ready_world(base)
    world.change(spec)
    held = world.step(10)
    assert held.status.phase.value == "Optimizing"
    assert "Deployment/mnist-shard-0" not in {
        f"{o['kind']}/{o['metadata']['name']}" for o in held.objects
    }
    world.finish_jobs()
    return world


# --------------------------------------------------------------------------- first deploy


def test_a_first_deploy_with_shadow_has_nothing_to_compare_and_serves_at_once() -> None:
    world = ready_world(BASE)
    assert world.names("Deployment") == {f"{NAME}-shard-0"}
    assert world.routing() == {"chain": "a", "id": "", "mode": "off", "percent": 0.0}
    plan = world.step(3)
    assert plan.status.rollout is None
    assert condition(plan, "Degraded")[:2] == ("False", "NoRollback")


# --------------------------------------------------------------------------- shadow


def test_a_new_artifact_runs_beside_the_serving_chain_until_it_is_promoted() -> None:
    world = rolling_to_new()
    old, new = aid(BASE), aid(NEW)
    start = world.step(20)
    assert start.status.rollout is not None
    assert (start.status.rollout.phase.value, start.status.rollout.candidate_chain) == (
        "Starting",
        "b",
    )
    assert start.status.phase.value == "RollingOut" and in_progress(start.status.rollout)
    assert "Normal/RolloutStarted" in reasons(start)
    assert condition(start, "Deployed")[:2] == ("Unknown", "RollingOut")
    assert start.delete == ()  # the serving chain is left exactly as it runs
    assert world.names("Deployment") == {f"{NAME}-shard-0", f"{NAME}-b-shard-0"}
    assert (
        world.objects[("Service", NAME)]["spec"]["selector"]["app.kubernetes.io/component"]
        == "runtime"
    )
    assert world.routing()["mode"] == "off" and world.routing()["id"] == f"{new}-g2"
    assert start.status.deployed_artifact_id == old

    world.available()
    mirroring = world.step(30)
    assert (
        mirroring.status.rollout is not None and mirroring.status.rollout.phase.value == "Shadowing"
    )
    assert world.routing() == {
        "candidateUrl": f"http://{NAME}-b-shard-0.{NS}.svc:8080",
        "chain": "a",
        "id": f"{new}-g2",
        "mode": "shadow",
        "percent": 50.0,
    }
    counting = world.step(40, shadow(4, 4, f"{new}-g2"))
    assert counting.status.rollout is not None and counting.status.rollout.requests_compared == 4

    # Reports of another rollout (pods not yet on the new routing) count for nothing.
    stale = world.step(45, shadow(500, 500, "other"))
    assert stale.status.rollout is not None and stale.status.rollout.phase.value == "Shadowing"

    promoted = world.step(50, shadow(10, 10, f"{new}-g2"))
    assert promoted.status.rollout is not None
    assert (promoted.status.rollout.phase.value, promoted.status.rollout.verdict) == (
        "Promoted",
        "WithinBudget",
    )
    assert "Normal/Promoted" in reasons(promoted)
    assert set(promoted.delete) >= {
        ("Deployment", f"{NAME}-shard-0"),
        ("Service", f"{NAME}-shard-0"),
    }
    assert world.names("Deployment") == {f"{NAME}-b-shard-0"}
    assert (
        world.objects[("Service", NAME)]["spec"]["selector"]["app.kubernetes.io/component"]
        == "runtime-b"
    )
    assert promoted.status.deployed_artifact_id == new
    assert promoted.status.phase.value == "Ready" and not in_progress(promoted.status.rollout)
    assert world.routing()["mode"] == "off" and world.routing()["chain"] == "b"

    settled = world.step(60)
    assert settled.delete == () and settled.events == ()
    assert settled.status.rollout is not None and settled.status.rollout.phase.value == "Promoted"
    assert condition(settled, "Degraded")[:2] == ("False", "NoRollback")


def test_a_candidate_outside_the_budget_is_removed_and_the_resource_says_why() -> None:
    world = rolling_to_new()
    new = aid(NEW)
    world.step(20)
    world.available()
    world.step(30)
    plan = world.step(40, shadow(10, 5, f"{new}-g2"))
    assert plan.status.rollout is not None
    assert (plan.status.rollout.phase.value, plan.status.rollout.verdict) == (
        "RolledBack",
        "BudgetExceeded",
    )
    assert ("Deployment", f"{NAME}-b-shard-0") in plan.delete
    assert world.names("Deployment") == {f"{NAME}-shard-0"}
    assert plan.status.phase.value == "Degraded"
    status, reason, message = condition(plan, "Degraded")
    assert (status, reason) == ("True", "BudgetExceeded")
    assert "top1Agreement 0.5000 < budget 0.95" in message and "10 requests compared" in message
    assert condition(plan, "Deployed")[:2] == ("False", "RolledBack")
    assert condition(plan, "Ready")[0] == "False"
    assert reasons(plan) == ["Warning/RolledBack"]
    assert plan.status.deployed_artifact_id == aid(BASE)
    assert world.routing()["mode"] == "off"

    # Nothing is retried until the spec changes ...
    again = world.step(50)
    assert again.events == () and f"{NAME}-b-shard-0" not in world.names("Deployment")
    # ... and any change of it (here a runtime one) starts a new rollout of the candidate.
    world.change(deep_merge(NEW, {"runtime": {"batching": {"enabled": True}}}))
    retry = world.step(60)
    assert "Normal/RolloutStarted" in reasons(retry)
    assert retry.status.rollout is not None and retry.status.rollout.generation == 3
    assert f"{NAME}-b-shard-0" in world.names("Deployment")
    assert world.routing()["id"] == f"{new}-g3"


def test_a_largest_difference_beyond_the_budget_rolls_back_before_the_minimum() -> None:
    world = rolling_to_new()
    world.step(20)
    world.available()
    world.step(30)
    plan = world.step(40, shadow(2, 2, f"{aid(NEW)}-g2", max_diff=3.0))
    assert plan.status.rollout is not None and plan.status.rollout.verdict == "BudgetExceeded"
    assert "maxAbsDiff 3 > budget 0.5" in (plan.status.rollout.message or "")


def test_a_candidate_that_never_becomes_ready_is_rolled_back() -> None:
    world = rolling_to_new()
    world.step(20)
    assert world.step(139).status.phase.value == "RollingOut"
    plan = world.step(140)
    assert plan.status.rollout is not None and plan.status.rollout.verdict == "CandidateNotReady"
    assert world.names("Deployment") == {f"{NAME}-shard-0"}


def test_a_candidate_whose_deployment_fails_is_rolled_back_at_once() -> None:
    world = rolling_to_new()
    world.step(20)
    deployment = world.objects[("Deployment", f"{NAME}-b-shard-0")]
    deployment["status"] = {
        "conditions": [
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet has timed out progressing.",
            }
        ]
    }
    plan = world.step(25)
    assert plan.status.rollout is not None and plan.status.rollout.verdict == "CandidateFailed"
    assert "ProgressDeadlineExceeded" in (plan.status.rollout.message or "")


def test_an_operator_restart_mid_rollout_continues_from_status() -> None:
    """Status is the only memory: a world rebuilt from it reaches the same verdict."""
    world = rolling_to_new()
    world.step(20)
    world.available()
    world.step(30)
    world.step(40, shadow(6, 6, f"{aid(NEW)}-g2"))
    restarted = World(world.spec)
    restarted.generation, restarted.objects, restarted.terminations = (
        world.generation,
        copy.deepcopy(world.objects),
        dict(world.terminations),
    )
    assert world.status is not None
    restarted.status = AcceleratedModelStatus.model_validate(
        json.loads(json.dumps(world.status.to_wire()))
    )
    for w in (world, restarted):
        plan = w.step(50, shadow(10, 10, f"{aid(NEW)}-g2"))
        assert plan.status.rollout is not None and plan.status.rollout.phase.value == "Promoted"
    assert restarted.objects == world.objects


def test_a_spec_change_mid_rollout_stops_it_and_removes_the_candidate() -> None:
    world = rolling_to_new()
    world.step(20)
    world.available()
    world.step(30)
    world.change(THIRD)
    plan = world.step(40)
    assert "Normal/RolloutStopped" in reasons(plan)
    assert plan.status.rollout is None
    assert world.names("Deployment") == {f"{NAME}-shard-0"}
    assert plan.status.phase.value == "Optimizing"
    assert world.routing()["mode"] == "off"


def test_switching_to_replace_mid_rollout_rolls_the_serving_chain_in_place() -> None:
    world = rolling_to_new()
    world.step(20)
    world.change(deep_merge(NEW, {"rollout": {"strategy": "replace", "shadow": None}}))
    plan = world.step(30)
    assert "Normal/RolloutStopped" in reasons(plan)
    assert world.names("Deployment") == {f"{NAME}-shard-0"}
    assert world.objects[("Deployment", f"{NAME}-shard-0")]["metadata"]["labels"][
        "kubeaccel.io/artifact-id"
    ] == aid(NEW)
    assert ("ConfigMap", f"{NAME}-routing") not in world.objects


# --------------------------------------------------------------------------- canary


def test_a_canary_steps_its_weight_and_is_promoted() -> None:
    world = rolling_to_new(CANARY_NEW, CANARY)
    rid = f"{aid(CANARY_NEW)}-g2"
    world.step(20)
    world.available()
    step1 = world.step(30)
    assert world.routing()["mode"] == "canary" and world.routing()["percent"] == 10.0

    def canary(cand: int, serv: int) -> RoutingReport:
        buckets = [0] * 20 + [cand]
        return RoutingReport(
            id=rid,
            mode="canary",
            candidate=ChainCounters(requests=cand, latency_buckets=buckets),
            serving=ChainCounters(requests=serv, latency_buckets=[0] * 20 + [serv]),
        )

    assert step1.status.rollout is not None and step1.status.rollout.step == 0
    step2 = world.step(61, canary(6, 54))
    assert step2.status.rollout is not None and step2.status.rollout.step == 1
    assert world.routing()["percent"] == 50.0 and "Normal/CanaryStep" in reasons(step2)
    done = world.step(92, canary(20, 70))
    assert done.status.rollout is not None and done.status.rollout.verdict == "CanaryPassed"
    assert world.names("Deployment") == {f"{NAME}-b-shard-0"}


# --------------------------------------------------------------------------- autoscaling

SCALED = {
    "runtime": {"resources": {"cpu": "500m"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}
}


def test_autoscaling_adds_an_hpa_per_shard_and_leaves_replicas_to_it() -> None:
    world = ready_world(deep_merge(SCALED, {"optimization": {"partition": {"shards": 2}}}))
    assert world.names("HorizontalPodAutoscaler") == {f"{NAME}-shard-0", f"{NAME}-shard-1"}
    hpa = world.objects[("HorizontalPodAutoscaler", f"{NAME}-shard-0")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{NAME}-shard-0",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    for name in world.names("Deployment"):
        assert "replicas" not in world.objects[("Deployment", name)]["spec"]
    assert world.names("PodDisruptionBudget") == {f"{NAME}-shard-0", f"{NAME}-shard-1"}
    assert world.names("ScaledObject") == set()

    world.available(replicas=4)  # the HPA scaled out
    plan = world.step(5)
    assert plan.status.ready_shards == "2/2"
    assert plan.status.shards is not None and {s.replicas for s in plan.status.shards} == {4}
    deployments = [o for o in plan.objects if o["kind"] == "Deployment"]
    assert all("replicas" not in d["spec"] for d in deployments)  # never fights the HPA


def test_keda_replaces_the_hpa_with_a_scaled_object_on_in_flight_requests() -> None:
    world = ready_world(SCALED)
    world.keda = True
    plan = world.step(5)
    assert ("HorizontalPodAutoscaler", f"{NAME}-shard-0") in plan.delete
    scaled = world.objects[("ScaledObject", f"{NAME}-shard-0")]
    trigger = scaled["spec"]["triggers"][0]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 5)
    assert trigger["type"] == "metrics-api" and trigger["metricType"] == "Value"
    assert trigger["metadata"] == {
        "url": f"http://{NAME}-shard-0.{NS}.svc:8080/metrics",
        "format": "prometheus",
        "valueLocation": "kubeaccel_inflight_requests",
        "targetValue": "8",
    }


def test_a_candidate_chain_gets_its_own_autoscalers_and_keeps_them_when_promoted() -> None:
    base = deep_merge(BASE, SCALED)
    new = deep_merge(NEW, SCALED)
    world = rolling_to_new(new, base)
    world.step(20)
    assert world.names("HorizontalPodAutoscaler") == {f"{NAME}-shard-0", f"{NAME}-b-shard-0"}
    world.available()
    world.step(30)
    world.step(40, shadow(10, 10, f"{aid(new)}-g2"))
    assert world.names("HorizontalPodAutoscaler") == {f"{NAME}-b-shard-0"}
    assert world.names("PodDisruptionBudget") == {f"{NAME}-b-shard-0"}
