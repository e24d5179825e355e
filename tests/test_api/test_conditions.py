"""Condition helpers follow Kubernetes conventions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubeaccel_api.conditions import aggregate_ready, get_condition, is_true, set_condition
from kubeaccel_api.v1alpha1 import Condition, ConditionStatus, ConditionType

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def _cond(ctype: ConditionType, status: ConditionStatus, reason: str = "R") -> Condition:
    return Condition(type=ctype, status=status, reason=reason, message="m")


def test_transition_time_is_kept_while_the_status_stays_the_same() -> None:
    conds = set_condition([], _cond(ConditionType.OPTIMIZED, ConditionStatus.TRUE), T0)
    conds = set_condition(conds, _cond(ConditionType.OPTIMIZED, ConditionStatus.TRUE, "X"), T1)
    cond = get_condition(conds, ConditionType.OPTIMIZED)
    assert cond is not None and cond.last_transition_time == T0 and cond.reason == "X"


def test_transition_time_moves_when_the_status_flips() -> None:
    conds = set_condition([], _cond(ConditionType.OPTIMIZED, ConditionStatus.TRUE), T0)
    conds = set_condition(conds, _cond(ConditionType.OPTIMIZED, ConditionStatus.FALSE), T1)
    cond = get_condition(conds, ConditionType.OPTIMIZED)
    assert cond is not None and cond.last_transition_time == T1
    assert len(conds) == 1


def test_ready_is_true_only_when_every_input_is_true_and_shards_are_available() -> None:
    conds: list[Condition] = []
    for ctype in (ConditionType.VALIDATED, ConditionType.OPTIMIZED, ConditionType.DEPLOYED):
        conds = set_condition(conds, _cond(ctype, ConditionStatus.TRUE), T0)
    ready = aggregate_ready(conds, shards_available=True, generation=3)
    assert ready.status is ConditionStatus.TRUE and ready.observed_generation == 3
    assert aggregate_ready(conds, shards_available=False, generation=3).status is (
        ConditionStatus.FALSE
    )


def test_ready_carries_the_reason_of_the_first_failing_input() -> None:
    conds = set_condition([], _cond(ConditionType.VALIDATED, ConditionStatus.TRUE), T0)
    conds = set_condition(
        conds, _cond(ConditionType.OPTIMIZED, ConditionStatus.FALSE, "BudgetExceeded"), T0
    )
    ready = aggregate_ready(conds, shards_available=True, generation=1)
    assert ready.status is ConditionStatus.FALSE and ready.reason == "BudgetExceeded"
    assert is_true(conds, ConditionType.VALIDATED)
    assert not is_true(conds, ConditionType.OPTIMIZED)


def test_ready_is_unknown_while_an_input_is_missing() -> None:
    ready = aggregate_ready([], shards_available=False, generation=None)
    assert ready.status is ConditionStatus.UNKNOWN


def test_ready_carries_what_keeps_a_shard_unavailable_when_it_is_known() -> None:
    conds: list[Condition] = []
    for ctype in (ConditionType.VALIDATED, ConditionType.OPTIMIZED, ConditionType.DEPLOYED):
        conds = set_condition(conds, _cond(ctype, ConditionStatus.TRUE), T0)
    problem = ("ImagePullFailed", "shard 0 pod p: cannot pull image x: not found")
    ready = aggregate_ready(conds, shards_available=False, generation=2, shards_problem=problem)
    assert (ready.status, ready.reason, ready.message) == (ConditionStatus.FALSE, *problem)
    # Available shards win over a stale problem; a failing input wins over both.
    ready = aggregate_ready(conds, shards_available=True, generation=2, shards_problem=problem)
    assert ready.status is ConditionStatus.TRUE
    conds = set_condition(conds, _cond(ConditionType.OPTIMIZED, ConditionStatus.FALSE, "X"), T0)
    ready = aggregate_ready(conds, shards_available=False, generation=2, shards_problem=problem)
    assert ready.reason == "X"
