"""Pure reconciliation: (resource, observed children, settings, now) -> plan.

The plan is the full desired set of children, the observed children to delete, the new
status and the Events that mark transitions. Nothing here talks to the API server, reads
the environment or the clock, so every case is a table-driven test.

Lifecycle: Validated -> (artifacts PVC) -> Optimizing (ConfigMap + Job for the artifact
id) -> Deploying (one Deployment + Service per shard, main Service, PDBs, autoscalers) ->
Ready. The running shards are never rolled to an artifact whose Job did not succeed: while
a new artifact is optimizing (or after it failed) the previous shards are left untouched.
With a shadow or canary rollout, a new artifact runs in the other chain beside the serving
one until the rollout state machine (rollout.py) promotes it or rolls it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.conditions import aggregate_ready, get_condition, set_condition
from kubeaccel_api.constants import LABEL_ARTIFACT, LABEL_COMPONENT, LABEL_SHARD
from kubeaccel_api.contract import contract_problems
from kubeaccel_api.routing import Routing, RoutingMode, RoutingReport, merge_reports
from kubeaccel_api.v1alpha1 import (
    AcceleratedModel,
    AcceleratedModelStatus,
    Condition,
    ConditionStatus,
    ConditionType,
    OptimizationStatus,
    Phase,
    RolloutPhase,
    RolloutStatus,
    RolloutStrategy,
    ShardStatus,
)
from pydantic import ValidationError

from kubeaccel_operator import rollout
from kubeaccel_operator.chains import (
    chain_artifact,
    chain_deployments,
    chain_failure,
    chain_objects,
    chain_ready,
    held,
    labels_of,
    serving_chain,
    shard_available,
    shard_index,
    still_rolling,
    template_hash,
    wanted_replicas,
)
from kubeaccel_operator.errors import InvalidSpec
from kubeaccel_operator.events import Event
from kubeaccel_operator.manifests.common import (
    ANNOTATION_SPEC_HASH,
    Chain,
    Manifest,
    endpoint_url,
    existing_claim,
    job_name,
    shard_url,
)
from kubeaccel_operator.manifests.configmap import build_routing_configmap, build_spec_configmap
from kubeaccel_operator.manifests.job import build_job
from kubeaccel_operator.manifests.pvc import build_artifacts_pvc
from kubeaccel_operator.manifests.service import build_main_service
from kubeaccel_operator.pods import (
    PodProblem,
    Termination,
    describe_exit,
    message_tail,
    pod_problem,
)

if TYPE_CHECKING:
    from kubeaccel_operator.settings import Settings

# Every kind of child, in the order they are applied (dependencies first).
CHILD_KINDS: tuple[str, ...] = (
    "ConfigMap",
    "PersistentVolumeClaim",
    "Job",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ScaledObject",
    "NetworkPolicy",
)
# Kinds whose observed objects the plan never deletes: a claim holds artifacts that
# may still be serving; it goes away with the resource (owner reference) only.
NEVER_DELETED = frozenset({"PersistentVolumeClaim"})

# Warning Event when the validation samples are too few to decide the accuracy budget.
REASON_GATE_UNRESOLVED = "AccuracyUnresolved"


@dataclass(frozen=True)
class Observed:
    """The children that exist now, by kind and name, plus facts read from pods."""

    objects: Mapping[str, Mapping[str, Manifest]] = field(default_factory=dict)
    # Job name -> how its most recently finished pod ended (message, exit code, reason).
    terminations: Mapping[str, Termination] = field(default_factory=dict)
    # Whether spec.storage.pvc.claimName exists (None: not asked, no claim named).
    claim_present: bool | None = None
    # Shard name -> execution providers its ready pods report (empty: not probed).
    providers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Whether KEDA's ScaledObject API is served (autoscaling then uses it instead of an HPA).
    keda: bool = False
    # What the serving chain's shard-0 pods report on GET /v2/rollout during a rollout.
    reports: tuple[RoutingReport, ...] = ()
    # The shard pods (both chains' Deployments' pods) by name: why a shard cannot start.
    pods: Mapping[str, Manifest] = field(default_factory=dict)

    def of_kind(self, kind: str) -> Mapping[str, Manifest]:
        """Observed objects of one kind, by name."""
        return self.objects.get(kind, {})

    def get(self, kind: str, name: str) -> Manifest | None:
        """One observed object, or None."""
        return self.of_kind(kind).get(name)


@dataclass(frozen=True)
class Plan:
    """What to make true: objects to apply by name, objects to delete, status, events."""

    objects: tuple[Manifest, ...]
    delete: tuple[tuple[str, str], ...]
    status: AcceleratedModelStatus
    events: tuple[Event, ...]
    # A dependency that is not there yet; the handler retries after applying the rest.
    waiting: str | None = None


class JobState(StrEnum):
    """Where the optimization of the current artifact stands."""

    CREATE = "Create"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    WAITING = "Waiting"


@dataclass(frozen=True)
class Outcome:
    """The optimization of the current artifact, as far as the children tell."""

    state: JobState
    reason: str
    message: str
    summary: OptimizationStatus | None = None
    warnings: tuple[Event, ...] = ()


# --------------------------------------------------------------------------- helpers


def job_condition(job: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The Job's condition `ctype` (Complete, Failed) when it is True, else None."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return dict(cond)
    return None


def parse_summary(message: str, artifact: str) -> tuple[OptimizationStatus, str | None]:
    """The Job's compact JSON summary; a minimal one plus a problem when it is unreadable."""
    try:
        data = json.loads(message)
    except ValueError:
        return OptimizationStatus(artifact_id=artifact), "termination message is not JSON"
    if not isinstance(data, dict):
        return OptimizationStatus(artifact_id=artifact), "termination message is not an object"
    known = {f.alias or name for name, f in OptimizationStatus.model_fields.items()}
    try:
        summary = OptimizationStatus.model_validate({k: v for k, v in data.items() if k in known})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return OptimizationStatus(artifact_id=artifact), f"summary field {where}: {first['msg']}"
    if summary.artifact_id != artifact:
        problem = f"summary is for artifact {summary.artifact_id}, expected {artifact}"
        return summary.model_copy(update={"artifact_id": artifact}), problem
    return summary, None


def optimization_outcome(
    res: AcceleratedModel,
    artifact: str,
    observed: Observed,
    old: AcceleratedModelStatus,
    cfg: Settings,
) -> Outcome:
    """Whether the artifact still needs a Job, is being optimized, succeeded or failed.

    An outcome recorded in status stands (the Job and its pod may be gone by now, and the
    pod's message is not read twice), then the Job decides, then Deployments already
    serving the artifact. A Job is never re-created for an artifact that already
    succeeded or failed.
    """
    recorded = _recorded_outcome(old, artifact)
    if recorded is not None:
        return recorded
    name = job_name(res.metadata.name, artifact)
    job = observed.get("Job", name)
    if job is not None and labels_of(job).get(LABEL_ARTIFACT) == artifact:
        ended = observed.terminations.get(name)
        message = ended.message if ended is not None else ""
        if job_condition(job, "Complete") is not None:
            summary, problem = parse_summary(message, artifact)
            warnings: tuple[Event, ...] = ()
            if problem:
                warnings = (Event("Warning", "SummaryUnreadable", f"Job {name}: {problem}"),)
            unresolved = gate_warning(summary)
            if unresolved:
                warnings += (Event("Warning", REASON_GATE_UNRESOLVED, unresolved),)
            return Outcome(
                JobState.SUCCEEDED, "Optimized", _success_message(summary), summary, warnings
            )
        failed = job_condition(job, "Failed")
        if failed is not None:
            reason, text = job_failure(name, failed, ended, cfg)
            return Outcome(JobState.FAILED, reason, text)
        active = job.get("status", {}).get("active") or 0
        reason = "JobRunning" if active else "JobPending"
        return Outcome(JobState.RUNNING, reason, f"Job {name} is optimizing artifact {artifact}")
    if any(
        labels_of(d).get(LABEL_ARTIFACT) == artifact
        for chain in Chain
        for d in chain_deployments(observed, chain).values()
    ):
        summary = OptimizationStatus(artifact_id=artifact)
        return Outcome(JobState.SUCCEEDED, "Optimized", _success_message(summary), summary)
    claim = existing_claim(res)
    if claim is not None and observed.claim_present is False:
        return Outcome(
            JobState.WAITING,
            "ClaimNotFound",
            f"PersistentVolumeClaim {claim} (spec.storage.pvc.claimName) does not exist yet",
        )
    return Outcome(JobState.CREATE, "JobCreated", f"Job {name} optimizes artifact {artifact}")


def job_failure(
    name: str, failed: Mapping[str, Any], ended: Termination | None, cfg: Settings
) -> tuple[str, str]:
    """(reason, message) of a failed optimization Job, in terms a user can act on.

    The Job's own reason (BackoffLimitExceeded, DeadlineExceeded) says little; how its
    last pod ended says why: out of memory names the setting to raise, a signal says the
    pod was killed, and the optimizer's own error says what was wrong with the model.
    """
    reason = str(failed.get("reason") or "JobFailed")
    text = f"Job {name} failed ({reason})"
    if failed.get("message"):
        text += f": {failed['message']}"
    if ended is not None and ended.reason == "OOMKilled":
        return "OOMKilled", (
            f"Job {name} failed: the optimizer ran out of memory (OOMKilled at its limit "
            f"{cfg.optimizer_memory}); raise the optimizer's memory: operator setting "
            "KUBEACCEL_OPTIMIZER_MEMORY (Helm value optimizer.memory)"
        )
    if reason == "DeadlineExceeded":
        text += (
            f"; the optimizer ran longer than {cfg.job_deadline_seconds} s: raise operator "
            "setting KUBEACCEL_JOB_DEADLINE_SECONDS (Helm value optimizer.deadlineSeconds)"
        )
    if ended is not None and ended.signal_name is not None:
        text += f"\nthe optimizer {describe_exit(ended)}: it was stopped from outside"
    tail = message_tail(ended.message) if ended is not None else ""
    if tail:
        text += f"\n{tail}"
    return reason, text


def _recorded_outcome(old: AcceleratedModelStatus, artifact: str) -> Outcome | None:
    """The success or failure of `artifact` that status already records, if any."""
    if old.optimization is not None and old.optimization.artifact_id == artifact:
        summary = old.optimization
        return Outcome(JobState.SUCCEEDED, "Optimized", _success_message(summary), summary)
    optimized = get_condition(old.conditions, ConditionType.OPTIMIZED)
    if (
        old.artifact_id == artifact
        and optimized is not None
        and optimized.status is ConditionStatus.FALSE
    ):
        return Outcome(JobState.FAILED, optimized.reason, optimized.message)
    return None


def gate_warning(summary: OptimizationStatus) -> str | None:
    """Why the validation data could not resolve the accuracy budget (None: it could)."""
    gate = summary.gate
    if gate is None or gate.resolved:
        return None
    return (
        f"artifact {summary.artifact_id}: the accuracy gate was decided on "
        f"{gate.samples} validation samples that cannot resolve the budget: {gate.message}"
    )


def _success_message(summary: OptimizationStatus) -> str:
    parts = [f"artifact {summary.artifact_id}"]
    if summary.chosen:
        parts.append(f"chosen {summary.chosen}")
    if summary.speedup is not None:
        parts.append(f"speedup {summary.speedup:.2f}x")
    if summary.size_ratio is not None:
        parts.append(f"size ratio {summary.size_ratio:.2f}")
    text = ", ".join(parts)
    if summary.gate is not None and not summary.gate.resolved:
        text += f"; accuracy budget NOT resolved by the validation data: {summary.gate.message}"
    return text


@dataclass(frozen=True)
class ShardProblem:
    """What keeps shard `index` from serving, read from one of its current pods."""

    index: int
    problem: PodProblem

    @property
    def reason(self) -> str:
        """The condition reason (CamelCase)."""
        return self.problem.reason

    @property
    def message(self) -> str:
        """Which shard and pod, and the kubelet's or the container's own words."""
        return f"shard {self.index} (pod {self.problem.pod}): {self.problem.message}"


def shard_problem(out: Delivery, observed: Observed) -> ShardProblem | None:
    """The first problem among the current pods of a serving shard that is not available.

    Only pods of the pod template the shard should run count: a pod of the previous
    template (or of the other chain) that crashed says nothing about this one.
    """
    if out.serving is None or out.chain is None:
        return None
    names = list(out.deployments) or list(chain_deployments(observed, out.chain))
    component = out.chain.component.value
    for name in names:
        want, seen = out.deployments.get(name), observed.get("Deployment", name)
        replicas = wanted_replicas(want, seen)
        ready, _ = shard_available(seen, want, out.serving, replicas)
        template = template_hash(want if want is not None else seen or {})
        if ready or template is None:
            continue
        index = shard_index(want if want is not None else seen or {})
        for pod_name in sorted(observed.pods):
            pod = observed.pods[pod_name]
            meta = pod.get("metadata", {})
            pod_labels = meta.get("labels") or {}
            current = (meta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH) == template
            ours = pod_labels.get(LABEL_COMPONENT) == component
            if current and ours and pod_labels.get(LABEL_SHARD) == str(index):
                problem = pod_problem(pod)
                if problem is not None:
                    return ShardProblem(index, problem)
    return None


def needs_job_message(res: AcceleratedModel, artifact: str) -> bool:
    """Whether a finished Job's termination message still has to be read."""
    return _recorded_outcome(res.status or AcceleratedModelStatus(), artifact) is None


def check_supported(res: AcceleratedModel) -> None:
    """Reject a written contract that does not fit the model the current artifact was built
    from (every storage type the API allows is supported)."""
    check_written_contract(res)


def check_written_contract(res: AcceleratedModel) -> None:
    """A contract change keeps the artifact (it is not part of its id) and runs no Job, so
    it is checked here against the contract that artifact's Job read from the model; the
    shards keep serving instead of rolling to pods that refuse to load.

    Raises:
        InvalidSpec: reason ContractMismatch, every disagreement named.
    """
    recorded = res.status.optimization if res.status else None
    if res.spec.inputs is None or recorded is None or recorded.contract is None:
        return
    if recorded.artifact_id != artifact_id(res.spec):
        return  # a new Job checks the contract against the model it loads
    model = recorded.contract
    problems = contract_problems(res.spec.inputs, res.spec.outputs, model.inputs, model.outputs)
    if problems:
        raise InvalidSpec(problems, reason="ContractMismatch")


# --------------------------------------------------------------------------- reconcile


def reconcile(res: AcceleratedModel, observed: Observed, cfg: Settings, now: datetime) -> Plan:
    """Compute the desired children, deletions, status and Events for one resource."""
    check_supported(res)
    name = res.metadata.name
    gen = res.metadata.generation
    old = res.status or AcceleratedModelStatus()
    artifact = artifact_id(res.spec)
    shards = res.spec.optimization.partition.shards

    desired: list[Manifest] = [build_spec_configmap(res)]
    pvc = build_artifacts_pvc(res)
    if pvc is not None:
        desired.append(pvc)

    outcome = optimization_outcome(res, artifact, observed, old, cfg)
    keep: set[tuple[str, str]] = set()
    job = job_name(name, artifact)
    if outcome.state in (JobState.CREATE, JobState.RUNNING):
        desired.append(build_job(res, artifact, cfg))
    elif observed.get("Job", job) is not None:
        keep.add(("Job", job))  # finished: its TTL removes it, logs stay readable until then

    out = deliver(res, observed, cfg, now, artifact, outcome, old.rollout)
    desired += out.objects
    if res.spec.rollout.strategy is not RolloutStrategy.REPLACE or out.rollout is not None:
        # Shard-0 pods mount it (optional): present from the start, the kubelet only ever
        # has to update it in place.
        desired.append(build_routing_configmap(res, out.routing))
    keep |= out.keep

    desired.sort(key=lambda obj: CHILD_KINDS.index(obj["kind"]))
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired} | keep
    delete = tuple(
        (kind, n)
        for kind in CHILD_KINDS
        if kind not in NEVER_DELETED
        for n in sorted(observed.of_kind(kind))
        if (kind, n) not in wanted
    )
    shard_states, ready_count = _shard_statuses(out, observed)
    all_ready = bool(shard_states) and ready_count == len(shard_states)
    problem = None
    if outcome.state is JobState.SUCCEEDED and not all_ready:
        problem = shard_problem(out, observed)

    conds = set_condition(
        old.conditions,
        _cond(ConditionType.VALIDATED, ConditionStatus.TRUE, "Valid", "spec is valid", gen),
        now,
    )
    conds = set_condition(conds, _optimized_condition(outcome, gen), now)
    conds = set_condition(conds, _deployed_condition(outcome, out, artifact, shards, gen), now)
    ready = aggregate_ready(
        conds,
        shards_available=all_ready,
        generation=gen,
        shards_problem=(problem.reason, problem.message) if problem else None,
    )
    old_ready = get_condition(old.conditions, ConditionType.READY)
    conds = set_condition(conds, ready, now)
    degraded = _degraded_condition(res, out, artifact, gen)
    if degraded is not None:
        conds = set_condition(conds, degraded, now)
    else:
        conds = [c for c in conds if c.type is not ConditionType.DEGRADED]

    rolled_back = _rolled_back(out, artifact)
    if rollout.in_progress(out.rollout):
        phase = Phase.ROLLING_OUT
    elif rolled_back:
        phase = Phase.DEGRADED
    else:
        phase = _phase(outcome, all_ready, old, out.serving, artifact, out.deployments, observed)
    if phase is Phase.DEPLOYING and problem is not None and problem.problem.fatal:
        phase = Phase.FAILED  # it will not start without a change; the message says why
    summary = outcome.summary if outcome.state is JobState.SUCCEEDED else old.optimization
    events = [*outcome.warnings, *out.events]
    if problem is not None and (old_ready is None or old_ready.reason != problem.reason):
        events.append(Event("Warning", problem.reason, problem.message))
    events += _transition_events(
        old, phase, outcome, artifact, job, shards, ready_count, res, rolled_back
    )
    status = AcceleratedModelStatus(
        phase=phase,
        observed_generation=gen,
        conditions=_ordered(conds),
        artifact_id=artifact,
        deployed_artifact_id=out.serving,
        optimization=summary,
        shards=shard_states or None,
        ready_shards=f"{ready_count}/{len(shard_states)}" if shard_states else None,
        endpoint=endpoint_url(res) if out.serving is not None else None,
        message=events[-1].message if events else old.message,
        rollout=out.rollout,
    )
    waiting = outcome.message if outcome.state is JobState.WAITING else None
    return Plan(tuple(desired), delete, status, tuple(events), waiting)


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Delivery:
    """What serves after this reconcile: chain objects, the rollout, shard 0's routing."""

    objects: list[Manifest]
    # Observed objects kept exactly as they run (the serving chain during a rollout).
    keep: set[tuple[str, str]]
    # Desired Deployments of the serving chain (empty while it is held as it runs).
    deployments: dict[str, Manifest]
    serving: str | None
    chain: Chain | None
    rollout: RolloutStatus | None
    routing: Routing
    events: tuple[Event, ...] = ()


def deliver(
    res: AcceleratedModel,
    observed: Observed,
    cfg: Settings,
    now: datetime,
    artifact: str,
    outcome: Outcome,
    state: RolloutStatus | None,
) -> Delivery:
    """Which chain serves which artifact, and where a shadow/canary rollout stands."""
    chain = serving_chain(res, observed)
    serving = chain_artifact(res, observed, chain) if chain is not None else None
    if outcome.state is not JobState.SUCCEEDED:
        # Hold: the previous artifact (if any) keeps serving exactly as it runs now.
        state, events = _stop_unfinished(state, artifact, res)
        if chain is None:
            return Delivery([], set(), {}, None, None, state, Routing(), events)
        kept = held(observed, chain) | {("Service", res.metadata.name)}
        off = Routing(chain=chain.value)
        return Delivery([], kept, {}, serving, chain, state, off, events)
    strategy = res.spec.rollout.strategy
    if (
        strategy is RolloutStrategy.REPLACE
        or chain is None
        or serving is None
        or serving == artifact
    ):
        # Replace (or a first deploy, or nothing new): the serving chain rolls in place.
        target = chain or Chain.A
        objects, deployments = chain_objects(res, artifact, cfg, target, observed.keda)
        state, events = _stop_unfinished(state, artifact, res)
        objects.append(build_main_service(res, target))
        off = Routing(chain=target.value)
        return Delivery(objects, set(), deployments, artifact, target, state, off, events)
    return _roll_out(res, observed, cfg, now, artifact, state, chain, serving)


def _roll_out(
    res: AcceleratedModel,
    observed: Observed,
    cfg: Settings,
    now: datetime,
    artifact: str,
    state: RolloutStatus | None,
    chain: Chain,
    serving: str,
) -> Delivery:
    """Shadow/canary: the candidate runs in the other chain until its verdict."""
    gen = res.metadata.generation or 0
    spec = res.spec.rollout
    events: list[Event] = []
    if state is None or _starts_anew(state, artifact, gen, chain):
        step = rollout.begin(spec.strategy, artifact, serving, chain.other.value, gen, now)
        state, events = step.state, list(step.events)
    candidate = Chain(state.candidate_chain)
    objects, deployments = chain_objects(res, artifact, cfg, candidate, observed.keda)
    if rollout.in_progress(state):
        seen = rollout.Observation(
            candidate_ready=chain_ready(deployments, observed, artifact),
            candidate_failure=chain_failure(deployments, observed),
            report=merge_reports(observed.reports, rollout.routing_id(state)),
        )
        step = rollout.advance(state, seen, spec, res.spec.comparison_budget, now)
        state = step.state
        events += step.events
    if state.phase is RolloutPhase.PROMOTED:
        objects.append(build_main_service(res, candidate))
        routing = Routing(chain=candidate.value)
        return Delivery(
            objects, set(), deployments, artifact, candidate, state, routing, tuple(events)
        )
    main = build_main_service(res, chain)
    kept = held(observed, chain)
    if state.phase is RolloutPhase.ROLLED_BACK:
        off = Routing(chain=chain.value)
        return Delivery([main], kept, {}, serving, chain, state, off, tuple(events))
    mode, percent = rollout.routing_of(state)
    routing = Routing(
        id=rollout.routing_id(state),
        mode=mode,
        chain=chain.value,
        candidate_url=shard_url(res, 0, candidate) if mode is not RoutingMode.OFF else None,
        percent=percent,
    )
    return Delivery([main, *objects], kept, {}, serving, chain, state, routing, tuple(events))


def _starts_anew(state: RolloutStatus, artifact: str, generation: int, chain: Chain) -> bool:
    """Whether the recorded rollout is not the one to continue for `artifact`.

    A rolled-back candidate is not retried until the spec changes (a new generation).
    """
    if state.candidate_artifact_id != artifact or state.candidate_chain != chain.other.value:
        return True
    if state.phase is RolloutPhase.PROMOTED:
        return True
    return state.phase is RolloutPhase.ROLLED_BACK and generation > state.generation


def _stop_unfinished(
    state: RolloutStatus | None, artifact: str, res: AcceleratedModel
) -> tuple[RolloutStatus | None, tuple[Event, ...]]:
    """A rollout still running when the spec no longer asks for it stops (its candidate goes)."""
    if not rollout.in_progress(state):
        return state, ()
    assert state is not None
    strategy = res.spec.rollout.strategy.value
    text = (
        f"rollout of artifact {state.candidate_artifact_id} stopped: the spec now asks for "
        f"artifact {artifact} with strategy {strategy}"
    )
    return None, (Event("Normal", "RolloutStopped", text),)


def _rolled_back(out: Delivery, artifact: str) -> bool:
    """Whether the spec's artifact was rolled back and another one serves."""
    state = out.rollout
    return (
        state is not None
        and state.phase is RolloutPhase.ROLLED_BACK
        and state.candidate_artifact_id == artifact
        and out.serving != artifact
    )


def _shard_statuses(out: Delivery, observed: Observed) -> tuple[list[ShardStatus], int]:
    """Per-shard status of the serving chain (desired when rolling forward, else observed)."""
    if out.serving is None or out.chain is None:
        return [], 0
    names = list(out.deployments) or [
        n
        for n, _ in sorted(
            chain_deployments(observed, out.chain).items(), key=lambda kv: shard_index(kv[1])
        )
    ]
    states: list[ShardStatus] = []
    ready_count = 0
    for n in names:
        want = out.deployments.get(n)
        seen = observed.get("Deployment", n)
        replicas = wanted_replicas(want, seen)
        ready, available = shard_available(seen, want, out.serving, replicas)
        ready_count += ready
        states.append(
            ShardStatus(
                index=shard_index(want if want is not None else seen or {}),
                deployment=n,
                service=n,
                replicas=replicas,
                ready_replicas=available,
                execution_provider=", ".join(observed.providers.get(n, ())) or None,
            )
        )
    return states, ready_count


def _cond(
    ctype: ConditionType, status: ConditionStatus, reason: str, message: str, gen: int | None
) -> Condition:
    return Condition(
        type=ctype, status=status, reason=reason, message=message, observed_generation=gen
    )


def _optimized_condition(outcome: Outcome, gen: int | None) -> Condition:
    status = {
        JobState.SUCCEEDED: ConditionStatus.TRUE,
        JobState.FAILED: ConditionStatus.FALSE,
    }.get(outcome.state, ConditionStatus.UNKNOWN)
    return _cond(ConditionType.OPTIMIZED, status, outcome.reason, outcome.message, gen)


def _deployed_condition(
    outcome: Outcome, out: Delivery, artifact: str, shards: int, gen: int | None
) -> Condition:
    failed = outcome.state is JobState.FAILED
    serving, state = out.serving, out.rollout
    if outcome.state is JobState.SUCCEEDED and serving == artifact:
        return _cond(
            ConditionType.DEPLOYED,
            ConditionStatus.TRUE,
            "ShardsDeployed",
            f"{shards} shard(s) of artifact {artifact}",
            gen,
        )
    if outcome.state is JobState.SUCCEEDED and state is not None and rollout.in_progress(state):
        message = (
            f"artifact {serving} serves while candidate {artifact} is checked: {state.message}"
        )
        return _cond(ConditionType.DEPLOYED, ConditionStatus.UNKNOWN, "RollingOut", message, gen)
    if _rolled_back(out, artifact) and state is not None:
        message = (
            f"artifact {serving} keeps serving; candidate {artifact} was rolled back "
            f"({state.verdict}): {state.message}"
        )
        return _cond(ConditionType.DEPLOYED, ConditionStatus.FALSE, "RolledBack", message, gen)
    status = ConditionStatus.FALSE if failed else ConditionStatus.UNKNOWN
    if serving is not None:
        message = f"artifact {serving} keeps serving; artifact {artifact} " + (
            "failed to optimize" if failed else "is not optimized yet"
        )
        return _cond(ConditionType.DEPLOYED, status, "ServingPreviousArtifact", message, gen)
    reason = "NoArtifact" if failed else "WaitingForArtifact"
    return _cond(ConditionType.DEPLOYED, status, reason, f"artifact {artifact} is not ready", gen)


def _degraded_condition(
    res: AcceleratedModel, out: Delivery, artifact: str, gen: int | None
) -> Condition | None:
    """Degraded (shadow/canary, or once a rollout happened): True while rolled back."""
    if res.spec.rollout.strategy is RolloutStrategy.REPLACE and out.rollout is None:
        return None
    state = out.rollout
    if _rolled_back(out, artifact) and state is not None:
        message = f"artifact {artifact} was rolled back and {out.serving} serves: {state.message}"
        reason = state.verdict or "RolledBack"
        return _cond(ConditionType.DEGRADED, ConditionStatus.TRUE, reason, message, gen)
    return _cond(
        ConditionType.DEGRADED, ConditionStatus.FALSE, "NoRollback", "no rollback in effect", gen
    )


def _phase(
    outcome: Outcome,
    all_ready: bool,
    old: AcceleratedModelStatus,
    serving: str | None,
    artifact: str,
    desired_deployments: Mapping[str, Manifest],
    observed: Observed,
) -> Phase:
    if outcome.state is JobState.FAILED:
        return Phase.FAILED
    if outcome.state is not JobState.SUCCEEDED:
        return Phase.OPTIMIZING
    if all_ready:
        return Phase.READY
    # A roll in progress (a changed pod template, old pods still running) is Deploying,
    # so a new pod that cannot start fails it; a missing Deployment is a loss.
    rolling = any(
        seen is not None and still_rolling(want, seen)
        for n, want in desired_deployments.items()
        for seen in [observed.get("Deployment", n)]
    )
    was_serving = old.phase in (Phase.READY, Phase.DEGRADED)
    if was_serving and old.deployed_artifact_id == artifact == serving and not rolling:
        return Phase.DEGRADED
    return Phase.DEPLOYING


def _transition_events(
    old: AcceleratedModelStatus,
    phase: Phase,
    outcome: Outcome,
    artifact: str,
    job: str,
    shards: int,
    ready_count: int,
    res: AcceleratedModel,
    rolled_back: bool,
) -> list[Event]:
    events: list[Event] = []
    old_optimized = get_condition(old.conditions, ConditionType.OPTIMIZED)
    newly_optimized = outcome.state is JobState.SUCCEEDED and (
        old_optimized is None
        or old_optimized.status is not ConditionStatus.TRUE
        or old.artifact_id != artifact
    )
    if newly_optimized:
        events.append(Event("Normal", "Optimized", outcome.message))
    new_job = outcome.state is JobState.CREATE and (
        old.artifact_id != artifact or old.phase is not Phase.OPTIMIZING
    )
    if phase is old.phase and not new_job:
        return events
    if phase is Phase.OPTIMIZING:
        if outcome.state is JobState.WAITING:
            events.append(Event("Warning", outcome.reason, outcome.message))
        else:
            events.append(Event("Normal", "Optimizing", f"Job {job} optimizes artifact {artifact}"))
    elif phase is Phase.DEPLOYING:
        events.append(
            Event("Normal", "Deploying", f"rolling {shards} shard(s) to artifact {artifact}")
        )
    elif phase is Phase.READY:
        events.append(Event("Normal", "Ready", f"{shards} shard(s) serving at {endpoint_url(res)}"))
    elif phase is Phase.DEGRADED and not rolled_back:  # a rollback posts its own Event
        events.append(Event("Warning", "Degraded", f"{ready_count}/{shards} shard(s) available"))
    elif phase is Phase.FAILED and outcome.state is JobState.FAILED:
        events.append(Event("Warning", outcome.reason, outcome.message))
    # A shard that cannot start has its own Warning (posted when its reason is new).
    return events


def _ordered(conds: Sequence[Condition]) -> list[Condition]:
    order = list(ConditionType)
    return sorted(conds, key=lambda c: order.index(c.type))


# --------------------------------------------------------------------------- invalid


def invalid_status(
    old: AcceleratedModelStatus | None,
    error: InvalidSpec,
    generation: int | None,
    now: datetime,
) -> tuple[AcceleratedModelStatus, tuple[Event, ...]]:
    """Status and Events for a resource that breaks a rule; children stay as they are."""
    old = old or AcceleratedModelStatus()
    message = "\n".join(error.problems)
    conds = set_condition(
        old.conditions,
        _cond(ConditionType.VALIDATED, ConditionStatus.FALSE, error.reason, message, generation),
        now,
    )
    ready = _cond(ConditionType.READY, ConditionStatus.FALSE, error.reason, message, generation)
    conds = set_condition(conds, ready, now)
    status = old.model_copy(
        update={
            "phase": Phase.FAILED,
            "observed_generation": generation,
            "conditions": _ordered(conds),
            "message": message,
        }
    )
    validated = get_condition(old.conditions, ConditionType.VALIDATED)
    repeated = (
        validated is not None
        and validated.status is ConditionStatus.FALSE
        and validated.message == message
    )
    events = () if repeated else (Event("Warning", error.reason, message),)
    return status, events
