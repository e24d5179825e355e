"""Pure: the shadow/canary rollout state machine.

A rollout lives in `status.rollout` (kubeaccel_api.v1alpha1.RolloutStatus), so the decision
survives an operator restart: every reconcile feeds the recorded state, what the cluster
shows now (is the candidate Ready, what did shard 0 of the serving chain measure) and the
clock into `advance`, which returns the next state and the Events of the transition.

    Starting --candidate Ready--> Shadowing --enough requests, in budget--> Promoted
        |                          |   \\--budget broken, errors, too slow----> RolledBack
        |                          \\--(canary) Canary step k --> step k+1 ... --> Promoted
        \\--not Ready in time, failed--> RolledBack

Counters come from the serving chain's shard-0 pods and restart with the routing id, so
a new rollout (new candidate or new generation) never inherits an old one's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kubeaccel_api.budget import budget_violations
from kubeaccel_api.routing import RoutingMode, RoutingReport
from kubeaccel_api.v1alpha1 import (
    AccuracyBudget,
    CanarySpec,
    RolloutPhase,
    RolloutSpec,
    RolloutStatus,
    RolloutStrategy,
    ShadowSpec,
)

from kubeaccel_operator.events import Event

ACTIVE = (RolloutPhase.STARTING, RolloutPhase.SHADOWING, RolloutPhase.CANARY)


@dataclass(frozen=True)
class Observation:
    """What the cluster shows about a rollout right now."""

    candidate_ready: bool
    # Why the candidate will never become Ready (e.g. its Deployment's progress deadline).
    candidate_failure: str | None = None
    # The serving chain's shard-0 reports for this rollout, summed; None before any arrived.
    report: RoutingReport | None = None


@dataclass(frozen=True)
class Step:
    """The state after one reconcile and the Events that mark what changed."""

    state: RolloutStatus
    events: tuple[Event, ...] = ()


def routing_id(state: RolloutStatus) -> str:
    """The id shard 0 counts under: one per candidate and generation."""
    return f"{state.candidate_artifact_id}-g{state.generation}"


def routing_of(state: RolloutStatus | None) -> tuple[RoutingMode, float]:
    """What shard 0 of the serving chain must do in this state (mode, percent)."""
    if state is None or state.weight is None:
        return RoutingMode.OFF, 0.0
    if state.phase is RolloutPhase.SHADOWING:
        return RoutingMode.SHADOW, state.weight
    if state.phase is RolloutPhase.CANARY:
        return RoutingMode.CANARY, state.weight
    return RoutingMode.OFF, 0.0


def in_progress(state: RolloutStatus | None) -> bool:
    """Whether a rollout is running (not yet judged)."""
    return state is not None and state.phase in ACTIVE


def begin(
    strategy: RolloutStrategy,
    candidate: str,
    baseline: str,
    chain: str,
    generation: int,
    now: datetime,
) -> Step:
    """A new rollout: the candidate's shards are about to be created."""
    state = RolloutStatus(
        strategy=strategy,
        phase=RolloutPhase.STARTING,
        candidate_artifact_id=candidate,
        baseline_artifact_id=baseline,
        candidate_chain=chain,
        generation=generation,
        started_at=now,
        message=f"starting candidate {candidate} beside {baseline}",
    )
    text = f"{strategy.value} rollout of artifact {candidate} (serving: {baseline}), chain {chain}"
    return Step(state, (Event("Normal", "RolloutStarted", text),))


def advance(
    state: RolloutStatus,
    seen: Observation,
    spec: RolloutSpec,
    budget: AccuracyBudget,
    now: datetime,
) -> Step:
    """The next state of a rollout given what is observed now."""
    if state.phase.finished:
        return Step(state)
    if seen.candidate_failure is not None:
        return _roll_back(state, "CandidateFailed", seen.candidate_failure, now)
    if state.phase is RolloutPhase.STARTING:
        return _starting(state, seen, spec, now)
    if state.phase is RolloutPhase.SHADOWING:
        return _shadowing(state, seen.report, spec.shadow_settings, budget, now)
    return _canary(state, seen.report, spec.canary_settings, now)


# --------------------------------------------------------------------------- phases


def _seconds(since: datetime | None, now: datetime) -> float:
    return (now - since).total_seconds() if since is not None else 0.0


def _starting(state: RolloutStatus, seen: Observation, spec: RolloutSpec, now: datetime) -> Step:
    if not seen.candidate_ready:
        waited = _seconds(state.started_at, now)
        if waited >= spec.ready_timeout_seconds:
            why = f"the candidate was not Ready {spec.ready_timeout_seconds} s after it was created"
            return _roll_back(state, "CandidateNotReady", why, now)
        return Step(state)
    if state.strategy is RolloutStrategy.SHADOW:
        percent = spec.shadow_settings.mirror_percent
        text = f"candidate Ready: mirroring {percent:g}% of requests to it and comparing"
        phase = RolloutPhase.SHADOWING
        update: dict[str, object] = {"requests_compared": 0, "requests_mirrored": 0}
    else:
        percent = float(spec.canary_settings.steps[0])
        text = f"candidate Ready: it answers {percent:g}% of requests (canary step 1)"
        phase = RolloutPhase.CANARY
        update = {
            "step": 0,
            "step_started_at": now,
            "step_baseline": 0,
            "candidate_requests": 0,
        }
    new = state.model_copy(
        update={
            "phase": phase,
            "analysis_started_at": now,
            "weight": percent,
            "message": text,
            **update,
        }
    )
    return Step(new, (Event("Normal", "CandidateReady", text),))


def _shadowing(
    state: RolloutStatus,
    report: RoutingReport | None,
    shadow: ShadowSpec,
    budget: AccuracyBudget,
    now: datetime,
) -> Step:
    counters = report.shadow if report is not None else None
    compared = counters.compared if counters else 0
    mirrored = counters.mirrored if counters else 0
    errors = counters.errors if counters else 0
    max_abs = counters.max_abs_diff() if counters else 0.0
    rel = counters.mean_rel_error() if counters else None
    top1 = counters.top1_agreement() if counters else None
    non_finite = counters.non_finite() if counters else 0
    state = state.model_copy(
        update={
            "requests_compared": compared,
            "requests_mirrored": mirrored,
            "candidate_errors": errors,
            "max_abs_diff": max_abs if compared else None,
            "mean_rel_error": rel,
            "top1_agreement": top1,
        }
    )
    figures = _shadow_figures(state)
    # A largest difference or a NaN never goes away: no need to wait for the rest.
    early = budget_violations(
        AccuracyBudget(max_abs_diff=budget.max_abs_diff),
        max_abs_diff=max_abs,
        mean_rel_error=None,
        top1_agreement=None,
        non_finite=non_finite,
    )
    if early:
        return _roll_back(state, "BudgetExceeded", f"{'; '.join(early)} ({figures})", now)
    if mirrored >= shadow.min_requests and errors / mirrored > shadow.max_error_rate:
        why = (
            f"the candidate failed {errors} of {mirrored} mirrored requests "
            f"({errors / mirrored:.1%} > {shadow.max_error_rate:.1%})"
        )
        return _roll_back(state, "CandidateErrors", why, now)
    if compared >= shadow.min_requests:
        if budget.min_top1_agreement is not None and top1 is None and not _other_limits(budget):
            why = (
                "the budget sets only minTop1Agreement, which needs a classifier output "
                f"([batch, classes]); nothing could be compared ({figures})"
            )
            return _roll_back(state, "BudgetNotMeasurable", why, now)
        broken = budget_violations(
            budget,
            max_abs_diff=max_abs,
            mean_rel_error=rel,
            top1_agreement=top1,
            non_finite=non_finite,
        )
        if broken:
            return _roll_back(state, "BudgetExceeded", f"{'; '.join(broken)} ({figures})", now)
        return _promote(state, "WithinBudget", f"inside the budget: {figures}", now)
    if _seconds(state.analysis_started_at, now) >= shadow.max_duration_seconds:
        why = (
            f"only {compared} of {shadow.min_requests} requests compared within "
            f"{shadow.max_duration_seconds} s ({figures})"
        )
        return _roll_back(state, "NotEnoughRequests", why, now)
    return Step(state.model_copy(update={"message": f"comparing: {figures}"}))


def _other_limits(budget: AccuracyBudget) -> bool:
    return budget.max_abs_diff is not None or budget.max_mean_rel_error is not None


def _shadow_figures(state: RolloutStatus) -> str:
    parts = [f"{state.requests_compared or 0} requests compared"]
    if state.top1_agreement is not None:
        parts.append(f"top1Agreement {state.top1_agreement:.4f}")
    if state.max_abs_diff is not None:
        parts.append(f"maxAbsDiff {state.max_abs_diff:.6g}")
    if state.mean_rel_error is not None:
        parts.append(f"meanRelError {state.mean_rel_error:.6g}")
    if state.candidate_errors:
        parts.append(f"{state.candidate_errors} candidate errors")
    return ", ".join(parts)


def _canary(
    state: RolloutStatus, report: RoutingReport | None, canary: CanarySpec, now: datetime
) -> Step:
    cand = report.candidate if report is not None else None
    serv = report.serving if report is not None else None
    state = state.model_copy(
        update={
            "candidate_requests": cand.requests if cand else 0,
            "candidate_errors": cand.errors if cand else 0,
            "serving_requests": serv.requests if serv else 0,
            "serving_errors": serv.errors if serv else 0,
            "candidate_p50_ms": cand.p50_ms() if cand else None,
            "serving_p50_ms": serv.p50_ms() if serv else None,
        }
    )
    figures = _canary_figures(state)
    step = state.step or 0
    requests = state.candidate_requests or 0
    if requests >= canary.min_requests:
        worse = _error_rate_excess(state)
        if worse > canary.max_error_rate:
            why = f"error rate {worse:.1%} above the serving chain's ({figures})"
            return _roll_back(state, "CandidateErrors", why, now)
    in_step = requests - (state.step_baseline or 0)
    if _seconds(state.step_started_at, now) >= canary.step_interval_seconds and (
        in_step >= canary.min_requests
    ):
        slow = _latency_regression(state, canary)
        if slow is not None:
            return _roll_back(state, "LatencyRegression", f"{slow} ({figures})", now)
        if step + 1 >= len(canary.steps):
            return _promote(state, "CanaryPassed", f"every step passed: {figures}", now)
        weight = float(canary.steps[step + 1])
        text = f"canary step {step + 2}: the candidate answers {weight:g}% ({figures})"
        new = state.model_copy(
            update={
                "step": step + 1,
                "weight": weight,
                "step_started_at": now,
                "step_baseline": requests,
                "message": text,
            }
        )
        return Step(new, (Event("Normal", "CanaryStep", text),))
    if _seconds(state.analysis_started_at, now) >= canary.max_duration_seconds:
        why = (
            f"step {step + 1} got {max(in_step, 0)} of {canary.min_requests} requests within "
            f"{canary.max_duration_seconds} s ({figures})"
        )
        return _roll_back(state, "NotEnoughRequests", why, now)
    return Step(state.model_copy(update={"message": f"canary step {step + 1}: {figures}"}))


def _error_rate_excess(state: RolloutStatus) -> float:
    cand = (state.candidate_errors or 0) / max(state.candidate_requests or 0, 1)
    serv = (state.serving_errors or 0) / max(state.serving_requests or 0, 1)
    return cand - serv


def _latency_regression(state: RolloutStatus, canary: CanarySpec) -> str | None:
    cand, serv = state.candidate_p50_ms, state.serving_p50_ms
    if cand is None or serv is None:
        return None
    allowed = max(serv * canary.max_latency_ratio, serv + canary.latency_tolerance_ms)
    if cand <= allowed:
        return None
    return f"median latency {cand:.3g} ms > allowed {allowed:.3g} ms (serving {serv:.3g} ms)"


def _canary_figures(state: RolloutStatus) -> str:
    text = (
        f"candidate {state.candidate_requests or 0} requests, {state.candidate_errors or 0} "
        f"errors; serving {state.serving_requests or 0} requests, "
        f"{state.serving_errors or 0} errors"
    )
    if state.candidate_p50_ms is not None and state.serving_p50_ms is not None:
        text += f"; p50 {state.candidate_p50_ms:.3g} ms vs {state.serving_p50_ms:.3g} ms"
    return text


# --------------------------------------------------------------------------- verdicts


def _finish(
    state: RolloutStatus, phase: RolloutPhase, verdict: str, why: str, now: datetime
) -> RolloutStatus:
    update = {"phase": phase, "verdict": verdict, "message": why, "finished_at": now}
    return state.model_copy(update={**update, "weight": None})


def _promote(state: RolloutStatus, verdict: str, why: str, now: datetime) -> Step:
    text = f"artifact {state.candidate_artifact_id} promoted: {why}"
    new = _finish(state, RolloutPhase.PROMOTED, verdict, why, now)
    return Step(new, (Event("Normal", "Promoted", text),))


def _roll_back(state: RolloutStatus, verdict: str, why: str, now: datetime) -> Step:
    text = (
        f"artifact {state.candidate_artifact_id} rolled back, "
        f"{state.baseline_artifact_id} keeps serving: {why}"
    )
    new = _finish(state, RolloutPhase.ROLLED_BACK, verdict, why, now)
    return Step(new, (Event("Warning", "RolledBack", text),))
