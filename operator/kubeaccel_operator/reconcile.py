"""Pure reconciliation: (resource, observed children, settings, now) -> plan.

The plan is the full desired set of children, the observed children to delete, the new
status and the Events that mark transitions. Nothing here talks to the API server, reads
the environment or the clock, so every case is a table-driven test.

Lifecycle: Validated -> (artifacts PVC) -> Optimizing (ConfigMap + Job for the artifact
id) -> Deploying (one Deployment + Service per shard, main Service, PDBs) -> Ready.
The running shards are never rolled to an artifact whose Job did not succeed: while a
new artifact is optimizing (or after it failed) the previous shards are left untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.conditions import aggregate_ready, get_condition, set_condition
from kubeaccel_api.constants import LABEL_ARTIFACT, LABEL_COMPONENT
from kubeaccel_api.contract import contract_problems
from kubeaccel_api.v1alpha1 import (
    AcceleratedModel,
    AcceleratedModelStatus,
    Condition,
    ConditionStatus,
    ConditionType,
    OptimizationStatus,
    Phase,
    ShardStatus,
)
from pydantic import ValidationError

from kubeaccel_operator.errors import InvalidSpec
from kubeaccel_operator.manifests.common import (
    ANNOTATION_SPEC_HASH,
    Component,
    Manifest,
    endpoint_url,
    existing_claim,
    job_name,
    shard_name,
)
from kubeaccel_operator.manifests.configmap import build_spec_configmap
from kubeaccel_operator.manifests.deployment import build_deployment
from kubeaccel_operator.manifests.job import build_job
from kubeaccel_operator.manifests.pdb import build_pdb
from kubeaccel_operator.manifests.pvc import build_artifacts_pvc
from kubeaccel_operator.manifests.service import build_main_service, build_shard_service

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
)
# Kinds whose observed objects the plan never deletes: a claim holds artifacts that
# may still be serving; it goes away with the resource (owner reference) only.
NEVER_DELETED = frozenset({"PersistentVolumeClaim"})
MESSAGE_TAIL_LINES = 10
MESSAGE_MAX_CHARS = 2000

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """The children that exist now, by kind and name, plus facts read from pods."""

    objects: Mapping[str, Mapping[str, Manifest]] = field(default_factory=dict)
    # Job name -> termination message of its most recently finished pod.
    messages: Mapping[str, str] = field(default_factory=dict)
    # Whether spec.storage.pvc.claimName exists (None: not asked, no claim named).
    claim_present: bool | None = None
    # Shard name -> execution providers its ready pods report (empty: not probed).
    providers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

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


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = obj.get("metadata", {}).get("labels") or {}
    return labels


def job_condition(job: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The Job's condition `ctype` (Complete, Failed) when it is True, else None."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return dict(cond)
    return None


def message_tail(message: str) -> str:
    """The useful end of a termination message: the `error` of a JSON one, or its last lines."""
    text = message.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        text = parsed["error"].strip()
    lines = text.splitlines()[-MESSAGE_TAIL_LINES:]
    return "\n".join(lines)[-MESSAGE_MAX_CHARS:]


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


def _runtime_deployments(observed: Observed) -> dict[str, Manifest]:
    return {
        name: obj
        for name, obj in observed.of_kind("Deployment").items()
        if _labels(obj).get(LABEL_COMPONENT) == Component.RUNTIME.value
    }


def serving_artifact(res: AcceleratedModel, observed: Observed) -> str | None:
    """The artifact the running shards serve (shard 0 decides while a roll is half done)."""
    deployments = _runtime_deployments(observed)
    first = deployments.get(shard_name(res.metadata.name, 0))
    candidates = [first] if first is not None else list(deployments.values())
    for obj in candidates:
        artifact = _labels(obj).get(LABEL_ARTIFACT)
        if artifact:
            return artifact
    return None


def optimization_outcome(
    res: AcceleratedModel, artifact: str, observed: Observed, old: AcceleratedModelStatus
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
    if job is not None and _labels(job).get(LABEL_ARTIFACT) == artifact:
        message = observed.messages.get(name, "")
        if job_condition(job, "Complete") is not None:
            summary, problem = parse_summary(message, artifact)
            warnings: tuple[Event, ...] = ()
            if problem:
                warnings = (Event("Warning", "SummaryUnreadable", f"Job {name}: {problem}"),)
            return Outcome(
                JobState.SUCCEEDED, "Optimized", _success_message(summary), summary, warnings
            )
        failed = job_condition(job, "Failed")
        if failed is not None:
            reason = str(failed.get("reason") or "JobFailed")
            text = f"Job {name} failed ({reason})"
            if failed.get("message"):
                text += f": {failed['message']}"
            tail = message_tail(message)
            if tail:
                text += f"\n{tail}"
            return Outcome(JobState.FAILED, reason, text)
        active = job.get("status", {}).get("active") or 0
        reason = "JobRunning" if active else "JobPending"
        return Outcome(JobState.RUNNING, reason, f"Job {name} is optimizing artifact {artifact}")
    if any(
        _labels(d).get(LABEL_ARTIFACT) == artifact for d in _runtime_deployments(observed).values()
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


def _success_message(summary: OptimizationStatus) -> str:
    parts = [f"artifact {summary.artifact_id}"]
    if summary.chosen:
        parts.append(f"chosen {summary.chosen}")
    if summary.speedup is not None:
        parts.append(f"speedup {summary.speedup:.2f}x")
    if summary.size_ratio is not None:
        parts.append(f"size ratio {summary.size_ratio:.2f}")
    return ", ".join(parts)


def shard_available(
    observed: Manifest | None, desired: Manifest | None, artifact: str, replicas: int
) -> tuple[bool, int]:
    """Whether a shard serves `artifact` with every replica available, and how many are."""
    if observed is None:
        return False, 0
    status = observed.get("status") or {}
    available = int(status.get("availableReplicas") or 0)
    if _labels(observed).get(LABEL_ARTIFACT) != artifact:
        return False, available
    if desired is not None and _template_hash(observed) != _template_hash(desired):
        return False, available  # this reconcile rolls it
    generation = observed.get("metadata", {}).get("generation") or 0
    if int(status.get("observedGeneration") or 0) < int(generation):
        return False, available
    updated = int(status.get("updatedReplicas") or 0)
    return replicas > 0 and updated >= replicas and available >= replicas, available


def _template_hash(deployment: Mapping[str, Any]) -> str | None:
    template = deployment.get("spec", {}).get("template", {})
    annotations: Mapping[str, str] = template.get("metadata", {}).get("annotations") or {}
    return annotations.get(ANNOTATION_SPEC_HASH)


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

    outcome = optimization_outcome(res, artifact, observed, old)
    keep: set[tuple[str, str]] = set()
    job = job_name(name, artifact)
    if outcome.state in (JobState.CREATE, JobState.RUNNING):
        desired.append(build_job(res, artifact, cfg))
    elif observed.get("Job", job) is not None:
        keep.add(("Job", job))  # finished: its TTL removes it, logs stay readable until then

    serving = serving_artifact(res, observed)
    desired_deployments: dict[str, Manifest] = {}
    if outcome.state is JobState.SUCCEEDED:
        serving = artifact
        serving_objects, desired_deployments = _serving_children(res, artifact, cfg)
        desired += serving_objects
    elif serving is not None:
        # Hold: the previous artifact keeps serving exactly as it runs now.
        for kind in ("Deployment", "Service", "PodDisruptionBudget"):
            keep.update((kind, n) for n in observed.of_kind(kind))

    desired.sort(key=lambda obj: CHILD_KINDS.index(obj["kind"]))
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in desired} | keep
    delete = tuple(
        (kind, n)
        for kind in CHILD_KINDS
        if kind not in NEVER_DELETED
        for n in sorted(observed.of_kind(kind))
        if (kind, n) not in wanted
    )
    shard_states, ready_count = _shard_statuses(serving, desired_deployments, observed)
    all_ready = bool(shard_states) and ready_count == len(shard_states)

    conds = set_condition(
        old.conditions,
        _cond(ConditionType.VALIDATED, ConditionStatus.TRUE, "Valid", "spec is valid", gen),
        now,
    )
    conds = set_condition(conds, _optimized_condition(outcome, gen), now)
    conds = set_condition(conds, _deployed_condition(outcome, serving, artifact, shards, gen), now)
    conds = set_condition(
        conds, aggregate_ready(conds, shards_available=all_ready, generation=gen), now
    )

    phase = _phase(outcome, all_ready, old, serving, artifact, desired_deployments, observed)
    summary = outcome.summary if outcome.state is JobState.SUCCEEDED else old.optimization
    events = list(outcome.warnings)
    events += _transition_events(old, phase, outcome, artifact, job, shards, ready_count, res)
    status = AcceleratedModelStatus(
        phase=phase,
        observed_generation=gen,
        conditions=_ordered(conds),
        artifact_id=artifact,
        deployed_artifact_id=serving,
        optimization=summary,
        shards=shard_states or None,
        ready_shards=f"{ready_count}/{len(shard_states)}" if shard_states else None,
        endpoint=endpoint_url(res) if serving is not None else None,
        message=events[-1].message if events else old.message,
    )
    waiting = outcome.message if outcome.state is JobState.WAITING else None
    return Plan(tuple(desired), delete, status, tuple(events), waiting)


def _serving_children(
    res: AcceleratedModel, artifact: str, cfg: Settings
) -> tuple[list[Manifest], dict[str, Manifest]]:
    """Per shard a Service, a Deployment and maybe a PDB, plus the main Service."""
    objects: list[Manifest] = []
    deployments: dict[str, Manifest] = {}
    for i in range(res.spec.optimization.partition.shards):
        deployment = build_deployment(res, i, artifact, cfg)
        deployments[shard_name(res.metadata.name, i)] = deployment
        objects += [build_shard_service(res, i), deployment]
        pdb = build_pdb(res, i)
        if pdb is not None:
            objects.append(pdb)
    objects.append(build_main_service(res))
    return objects, deployments


def _shard_statuses(
    serving: str | None, desired: Mapping[str, Manifest], observed: Observed
) -> tuple[list[ShardStatus], int]:
    """Per-shard status (desired shards when rolling forward, observed ones when holding)."""
    if serving is None:
        return [], 0
    names = list(desired) or sorted(_runtime_deployments(observed), key=_shard_index)
    states: list[ShardStatus] = []
    ready_count = 0
    for n in names:
        want = desired.get(n)
        seen = observed.get("Deployment", n)
        replicas = _replicas(want if want is not None else seen)
        ready, available = shard_available(seen, want, serving, replicas)
        ready_count += ready
        states.append(
            ShardStatus(
                index=_shard_index(n),
                deployment=n,
                service=n,
                replicas=replicas,
                ready_replicas=available,
                execution_provider=", ".join(observed.providers.get(n, ())) or None,
            )
        )
    return states, ready_count


def _shard_index(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _replicas(deployment: Mapping[str, Any] | None) -> int:
    if deployment is None:
        return 0
    return int(deployment.get("spec", {}).get("replicas") or 0)


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
    outcome: Outcome, serving: str | None, artifact: str, shards: int, gen: int | None
) -> Condition:
    failed = outcome.state is JobState.FAILED
    if outcome.state is JobState.SUCCEEDED:
        return _cond(
            ConditionType.DEPLOYED,
            ConditionStatus.TRUE,
            "ShardsDeployed",
            f"{shards} shard(s) of artifact {artifact}",
            gen,
        )
    status = ConditionStatus.FALSE if failed else ConditionStatus.UNKNOWN
    if serving is not None:
        message = f"artifact {serving} keeps serving; artifact {artifact} " + (
            "failed to optimize" if failed else "is not optimized yet"
        )
        return _cond(ConditionType.DEPLOYED, status, "ServingPreviousArtifact", message, gen)
    reason = "NoArtifact" if failed else "WaitingForArtifact"
    return _cond(ConditionType.DEPLOYED, status, reason, f"artifact {artifact} is not ready", gen)


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
    # A changed pod template is a roll in progress; a missing Deployment is a loss.
    rolling = any(
        seen is not None and _template_hash(want) != _template_hash(seen)
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
    elif phase is Phase.DEGRADED:
        events.append(Event("Warning", "Degraded", f"{ready_count}/{shards} shard(s) available"))
    elif phase is Phase.FAILED:
        events.append(Event("Warning", outcome.reason, outcome.message))
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
