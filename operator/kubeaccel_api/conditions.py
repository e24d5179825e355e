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


def aggregate_ready(
    conds: Sequence[Condition], *, shards_available: bool, generation: int | None
) -> Condition:
    """Ready: True when every input condition is True and every shard is available."""
    for ctype in READY_INPUTS:
        cond = get_condition(conds, ctype)
        if cond is None or cond.status is not ConditionStatus.TRUE:
            status = (
                ConditionStatus.FALSE
                if cond and cond.status is ConditionStatus.FALSE
                else (ConditionStatus.UNKNOWN)
            )
            reason = cond.reason if cond else f"{ctype.value}Pending"
            message = f"{ctype.value}: {cond.message}" if cond else f"{ctype.value} not yet known"
            return Condition(
                type=ConditionType.READY,
                status=status,
                reason=reason,
                message=message,
                observed_generation=generation,
            )
    if not shards_available:
        return Condition(
            type=ConditionType.READY,
            status=ConditionStatus.FALSE,
            reason="ShardsUnavailable",
            message="not every shard has its replicas available",
            observed_generation=generation,
        )
    return Condition(
        type=ConditionType.READY,
        status=ConditionStatus.TRUE,
        reason="AllShardsAvailable",
        message="every shard is serving",
        observed_generation=generation,
    )
