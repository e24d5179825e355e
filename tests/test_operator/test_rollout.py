"""The rollout state machine: every transition, and a restart half-way through."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from kubeaccel_api.routing import (
    LATENCY_BOUNDS_MS,
    ChainCounters,
    OutputCounters,
    RoutingMode,
    RoutingReport,
    ShadowCounters,
    bucket_index,
)
from kubeaccel_api.v1alpha1 import (
    AccuracyBudget,
    RolloutPhase,
    RolloutSpec,
    RolloutStatus,
    RolloutStrategy,
)
from kubeaccel_operator.rollout import (
    Observation,
    advance,
    begin,
    in_progress,
    routing_id,
    routing_of,
)
from operator_samples import NOW

SHADOW = RolloutSpec.model_validate(
    {
        "strategy": "shadow",
        "shadow": {"mirrorPercent": 20, "minRequests": 100, "maxDurationSeconds": 600},
        "readyTimeoutSeconds": 300,
    }
)
CANARY = RolloutSpec.model_validate(
    {
        "strategy": "canary",
        "canary": {
            "steps": [10, 50],
            "stepIntervalSeconds": 60,
            "minRequests": 20,
            "maxErrorRate": 0.05,
            "maxLatencyRatio": 1.5,
            "latencyToleranceMs": 1,
            "maxDurationSeconds": 600,
        },
    }
)
BUDGET = AccuracyBudget(min_top1_agreement=0.95, max_abs_diff=0.5)
READY = Observation(candidate_ready=True)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def started(strategy: RolloutStrategy = RolloutStrategy.SHADOW) -> RolloutStatus:
    return begin(strategy, "cand", "base", "b", 3, NOW).state


def analysing(spec: RolloutSpec = SHADOW) -> RolloutStatus:
    state = advance(started(spec.strategy), READY, spec, BUDGET, at(10)).state
    assert state.phase in (RolloutPhase.SHADOWING, RolloutPhase.CANARY)
    return state


def shadow_report(
    compared: int,
    *,
    agreed: int | None = None,
    max_diff: float = 0.01,
    errors: int = 0,
    non_finite: int = 0,
    rows: int = 1,
    rid: str = "cand-g3",
) -> Observation:
    agreed = compared * rows if agreed is None else agreed
    counters = ShadowCounters(
        mirrored=compared + errors,
        compared=compared,
        errors=errors,
        top1_compared=compared * rows,
        top1_agreed=agreed,
        outputs={
            "y": OutputCounters(
                max_abs_diff=max_diff,
                abs_diff_sum=max_diff * compared,
                abs_ref_sum=10.0 * compared,
                non_finite=non_finite,
            )
        },
    )
    return Observation(True, report=RoutingReport(id=rid, mode="shadow", shadow=counters))


def histogram(*latencies_ms: float) -> list[int]:
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for ms in latencies_ms:
        buckets[bucket_index(ms)] += 1
    return buckets


def canary_report(
    cand: int,
    serv: int,
    *,
    cand_errors: int = 0,
    serv_errors: int = 0,
    cand_ms: float = 2.0,
    serv_ms: float = 2.0,
) -> Observation:
    return Observation(
        True,
        report=RoutingReport(
            id="cand-g3",
            mode="canary",
            candidate=ChainCounters(
                requests=cand, errors=cand_errors, latency_buckets=histogram(*[cand_ms] * cand)
            ),
            serving=ChainCounters(
                requests=serv, errors=serv_errors, latency_buckets=histogram(*[serv_ms] * serv)
            ),
        ),
    )


def reasons(step: object) -> list[str]:
    return [f"{e.type}/{e.reason}" for e in step.events]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- Starting


def test_a_new_rollout_starts_with_an_event_and_no_routing() -> None:
    step = begin(RolloutStrategy.SHADOW, "cand", "base", "b", 3, NOW)
    assert step.state.phase is RolloutPhase.STARTING
    assert reasons(step) == ["Normal/RolloutStarted"]
    assert routing_of(step.state) == (RoutingMode.OFF, 0.0)
    assert routing_id(step.state) == "cand-g3"
    assert in_progress(step.state)


def test_starting_waits_for_the_candidate_within_the_ready_timeout() -> None:
    step = advance(started(), Observation(candidate_ready=False), SHADOW, BUDGET, at(299))
    assert step.state.phase is RolloutPhase.STARTING and step.events == ()


def test_a_candidate_not_ready_in_time_is_rolled_back() -> None:
    step = advance(started(), Observation(candidate_ready=False), SHADOW, BUDGET, at(300))
    assert step.state.phase is RolloutPhase.ROLLED_BACK
    assert step.state.verdict == "CandidateNotReady"
    assert "300 s" in (step.state.message or "")
    assert reasons(step) == ["Warning/RolledBack"]
    assert "base keeps serving" in step.events[0].message
    assert not in_progress(step.state)


def test_a_failing_candidate_is_rolled_back_at_once() -> None:
    seen = Observation(candidate_ready=False, candidate_failure="ProgressDeadlineExceeded: x")
    step = advance(started(), seen, SHADOW, BUDGET, at(5))
    assert (step.state.phase, step.state.verdict) == (RolloutPhase.ROLLED_BACK, "CandidateFailed")
    assert step.state.message == "ProgressDeadlineExceeded: x"


def test_a_ready_candidate_starts_the_shadow_comparison() -> None:
    step = advance(started(), READY, SHADOW, BUDGET, at(10))
    assert step.state.phase is RolloutPhase.SHADOWING
    assert step.state.analysis_started_at == at(10)
    assert routing_of(step.state) == (RoutingMode.SHADOW, 20.0)
    assert reasons(step) == ["Normal/CandidateReady"]


def test_a_ready_candidate_starts_the_first_canary_step() -> None:
    step = advance(started(RolloutStrategy.CANARY), READY, CANARY, BUDGET, at(10))
    assert step.state.phase is RolloutPhase.CANARY
    assert (step.state.step, step.state.weight, step.state.step_started_at) == (0, 10.0, at(10))
    assert routing_of(step.state) == (RoutingMode.CANARY, 10.0)


# --------------------------------------------------------------------------- Shadowing


def test_shadowing_keeps_counting_below_the_minimum() -> None:
    step = advance(analysing(), shadow_report(40), SHADOW, BUDGET, at(100))
    assert step.state.phase is RolloutPhase.SHADOWING and step.events == ()
    assert (step.state.requests_compared, step.state.top1_agreement) == (40, 1.0)
    assert step.state.message == (
        "comparing: 40 requests compared, top1Agreement 1.0000, maxAbsDiff 0.01, meanRelError 0.001"
    )


def test_a_candidate_inside_the_budget_is_promoted() -> None:
    step = advance(analysing(), shadow_report(100, agreed=98), SHADOW, BUDGET, at(100))
    assert (step.state.phase, step.state.verdict) == (RolloutPhase.PROMOTED, "WithinBudget")
    assert reasons(step) == ["Normal/Promoted"]
    assert "100 requests compared, top1Agreement 0.9800" in step.events[0].message
    assert routing_of(step.state) == (RoutingMode.OFF, 0.0)
    assert step.state.finished_at == at(100)


def test_a_candidate_that_disagrees_is_rolled_back_with_the_numbers() -> None:
    step = advance(analysing(), shadow_report(100, agreed=60), SHADOW, BUDGET, at(100))
    assert (step.state.phase, step.state.verdict) == (RolloutPhase.ROLLED_BACK, "BudgetExceeded")
    assert step.state.message is not None
    assert step.state.message.startswith("top1Agreement 0.6000 < budget 0.95")
    assert "100 requests compared" in step.state.message


def test_a_difference_beyond_the_budget_rolls_back_before_the_minimum() -> None:
    step = advance(analysing(), shadow_report(5, max_diff=2.0), SHADOW, BUDGET, at(20))
    assert step.state.verdict == "BudgetExceeded"
    assert (step.state.message or "").startswith("maxAbsDiff 2 > budget 0.5")


def test_non_finite_candidate_outputs_roll_back() -> None:
    step = advance(analysing(), shadow_report(5, non_finite=3), SHADOW, BUDGET, at(20))
    assert step.state.verdict == "BudgetExceeded"
    assert "3 output values are NaN/Inf" in (step.state.message or "")


def test_a_candidate_that_fails_mirrored_requests_is_rolled_back() -> None:
    step = advance(analysing(), shadow_report(80, errors=20), SHADOW, BUDGET, at(50))
    assert step.state.verdict == "CandidateErrors"
    assert "failed 20 of 100 mirrored requests (20.0% > 1.0%)" in (step.state.message or "")


def test_too_little_traffic_within_the_longest_comparison_rolls_back() -> None:
    state = analysing()
    assert advance(state, shadow_report(30), SHADOW, BUDGET, at(609)).state.phase is (
        RolloutPhase.SHADOWING
    )
    step = advance(state, shadow_report(30), SHADOW, BUDGET, at(610))
    assert step.state.verdict == "NotEnoughRequests"
    assert "only 30 of 100 requests compared within 600 s" in (step.state.message or "")


def test_no_report_yet_counts_as_nothing_compared() -> None:
    step = advance(analysing(), READY, SHADOW, BUDGET, at(30))
    assert step.state.phase is RolloutPhase.SHADOWING
    assert step.state.requests_compared == 0 and step.state.max_abs_diff is None


def test_a_top1_budget_on_a_model_that_is_no_classifier_cannot_pass() -> None:
    seen = shadow_report(100)
    assert seen.report is not None
    report = seen.report.model_copy(
        update={"shadow": seen.report.shadow.model_copy(update={"top1_compared": 0})}
    )
    budget = AccuracyBudget(min_top1_agreement=0.9)
    step = advance(analysing(), Observation(True, report=report), SHADOW, budget, at(40))
    assert step.state.verdict == "BudgetNotMeasurable"


def test_a_candidate_failing_during_the_comparison_is_rolled_back() -> None:
    seen = Observation(candidate_ready=False, candidate_failure="crash loop")
    assert advance(analysing(), seen, SHADOW, BUDGET, at(40)).state.verdict == "CandidateFailed"


# --------------------------------------------------------------------------- Canary


def test_a_canary_step_is_held_for_its_interval() -> None:
    state = analysing(CANARY)
    step = advance(state, canary_report(50, 450), CANARY, BUDGET, at(69))
    assert (step.state.phase, step.state.step) == (RolloutPhase.CANARY, 0)
    assert step.state.candidate_requests == 50 and step.events == ()


def test_a_passed_step_moves_to_the_next_weight() -> None:
    step = advance(analysing(CANARY), canary_report(50, 450), CANARY, BUDGET, at(70))
    assert (step.state.step, step.state.weight) == (1, 50.0)
    assert (step.state.step_started_at, step.state.step_baseline) == (at(70), 50)
    assert reasons(step) == ["Normal/CanaryStep"]
    assert routing_of(step.state) == (RoutingMode.CANARY, 50.0)


def test_a_step_without_enough_requests_waits_longer() -> None:
    step = advance(analysing(CANARY), canary_report(10, 90), CANARY, BUDGET, at(200))
    assert step.state.step == 0 and step.state.phase is RolloutPhase.CANARY


def test_the_last_passed_step_promotes() -> None:
    state = advance(analysing(CANARY), canary_report(50, 450), CANARY, BUDGET, at(70)).state
    held = advance(state, canary_report(60, 460), CANARY, BUDGET, at(200))
    assert held.state.phase is RolloutPhase.CANARY  # 10 requests in this step: not enough
    step = advance(state, canary_report(300, 700), CANARY, BUDGET, at(131))
    assert (step.state.phase, step.state.verdict) == (RolloutPhase.PROMOTED, "CanaryPassed")
    assert "candidate 300 requests, 0 errors; serving 700 requests, 0 errors" in (
        step.state.message or ""
    )


def test_a_canary_failing_more_than_the_serving_chain_is_rolled_back() -> None:
    seen = canary_report(40, 360, cand_errors=4, serv_errors=0)
    step = advance(analysing(CANARY), seen, CANARY, BUDGET, at(30))
    assert step.state.verdict == "CandidateErrors"
    assert "error rate 10.0% above the serving chain's" in (step.state.message or "")


def test_errors_the_serving_chain_has_too_do_not_count_against_the_canary() -> None:
    seen = canary_report(40, 360, cand_errors=4, serv_errors=36)
    step = advance(analysing(CANARY), seen, CANARY, BUDGET, at(30))
    assert step.state.phase is RolloutPhase.CANARY


def test_a_slower_canary_is_rolled_back_at_the_step_end() -> None:
    seen = canary_report(50, 450, cand_ms=9.0, serv_ms=2.0)
    step = advance(analysing(CANARY), seen, CANARY, BUDGET, at(70))
    assert step.state.verdict == "LatencyRegression"
    assert (step.state.message or "").startswith("median latency")


def test_latency_within_the_tolerance_passes_even_above_the_ratio() -> None:
    seen = canary_report(50, 450, cand_ms=0.4, serv_ms=0.2)  # 2x, but +0.2 ms < 1 ms
    step = advance(analysing(CANARY), seen, CANARY, BUDGET, at(70))
    assert step.state.step == 1


def test_a_canary_that_never_gets_enough_requests_is_rolled_back() -> None:
    step = advance(analysing(CANARY), canary_report(5, 45), CANARY, BUDGET, at(610))
    assert step.state.verdict == "NotEnoughRequests"
    assert "step 1 got 5 of 20 requests within 600 s" in (step.state.message or "")


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("agreed", [100, 10])
def test_a_verdict_is_final(agreed: int) -> None:
    done = advance(analysing(), shadow_report(100, agreed=agreed), SHADOW, BUDGET, at(60)).state
    assert done.phase.finished
    again = advance(done, shadow_report(500, agreed=0), SHADOW, BUDGET, at(9999))
    assert again.state == done and again.events == ()


def test_an_operator_restart_half_way_reaches_the_same_verdict() -> None:
    """State goes through the wire form (status) between reconciles, as after a restart."""
    observations = [
        (at(10), READY),
        (at(30), shadow_report(20)),
        (at(60), shadow_report(60, agreed=58)),
        (at(90), shadow_report(100, agreed=97)),
    ]

    def run(restart_after: int | None) -> RolloutStatus:
        state = started()
        for i, (now, seen) in enumerate(observations):
            state = advance(state, seen, SHADOW, BUDGET, now).state
            if i == restart_after:
                state = RolloutStatus.model_validate(state.to_wire())  # written, then read back
        return state

    straight = run(None)
    assert straight.phase is RolloutPhase.PROMOTED
    for point in range(len(observations)):
        assert run(point) == straight


def test_a_canary_restarted_mid_step_keeps_its_step_and_baseline() -> None:
    state = advance(analysing(CANARY), canary_report(50, 450), CANARY, BUDGET, at(70)).state
    reread = RolloutStatus.model_validate(state.to_wire())
    assert (reread.step, reread.step_baseline, reread.step_started_at) == (1, 50, at(70))
    step = advance(reread, canary_report(300, 700), CANARY, BUDGET, at(131))
    assert step.state.phase is RolloutPhase.PROMOTED
