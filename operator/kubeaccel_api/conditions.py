"""Pure helpers over Kubernetes-style conditions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kubeaccel_api.v1alpha1 import Condition, ConditionStatus, ConditionType

# Ready is the conjunction of these.
READY_INPUTS = (ConditionType.VALIDATED, ConditionType.OPTIMIZED, ConditionType.DEPLOYED)


def get_condition(conds: Sequence[Condition], ctype: ConditionType) -> Condition | None:
    """Return the condition of type `ctype`, if present."""
    return next((c for c in conds if c.type == ctype), None)


def is_true(conds: Sequence[Condition], ctype: ConditionType) -> bool:
    """Whether the condition exists and is True."""
    cond = get_condition(conds, ctype)
    return cond is not None and cond.status is ConditionStatus.TRUE


def set_condition(conds: Sequence[Condition], new: Condition, now: datetime) -> list[Condition]:
    """Insert or replace `new`; lastTransitionTime moves only when the status flips."""
    old = get_condition(conds, new.type)
    since = old.last_transition_time if old and old.status == new.status else now
    rest = [c for c in conds if c.type != new.type]
    return [*rest, new.model_copy(update={"last_transition_time": since or now})]


def _ready_verdict(
    conds: Sequence[Condition], shards_available: bool, shards_problem: tuple[str, str] | None
) -> tuple[ConditionStatus, str, str]:
    """(status, reason, message) of Ready: the first input not True decides, then the shards."""
    for ctype in READY_INPUTS:
        cond = get_condition(conds, ctype)
        if cond is None:
            return ConditionStatus.UNKNOWN, f"{ctype.value}Pending", f"{ctype.value} not yet known"
        if cond.status is not ConditionStatus.TRUE:
            # An input that is False makes Ready False; an Unknown one leaves it Unknown.
            return cond.status, cond.reason, f"{ctype.value}: {cond.message}"
    if not shards_available and shards_problem is not None:
        return ConditionStatus.FALSE, *shards_problem
    if not shards_available:
        return (
            ConditionStatus.FALSE,
            "ShardsUnavailable",
            "not every shard has its replicas available",
        )
    return ConditionStatus.TRUE, "AllShardsAvailable", "every shard is serving"


def aggregate_ready(
    conds: Sequence[Condition],
    *,
    shards_available: bool,
    generation: int | None,
    shards_problem: tuple[str, str] | None = None,
) -> Condition:
    """Ready: True when every input condition is True and every shard is available.

    `shards_problem` is the (reason, message) of what keeps a shard unavailable, when the
    pods tell (a crash, an image that cannot be pulled); Ready carries it.
    """
    status, reason, message = _ready_verdict(conds, shards_available, shards_problem)
    return Condition(
        type=ConditionType.READY,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
    )
