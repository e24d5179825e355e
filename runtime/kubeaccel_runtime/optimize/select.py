"""Pure choice among measured candidates: the best for an objective, and the Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubeaccel_api.v1alpha1 import Objective


@dataclass(frozen=True)
class Scored:
    """What a candidate inside the budget measured, on every axis the objectives use.

    quality is higher-is-better: labelled accuracy, else top-1 agreement, else minus the
    output error, so candidates of one model compare on the same scale.
    """

    name: str
    bytes: int
    latency_ms: float
    throughput: float
    quality: float


def dominates(a: Scored, b: Scored) -> bool:
    """a is at least as good as b on every axis and better on one."""
    at_least = (
        a.bytes <= b.bytes
        and a.latency_ms <= b.latency_ms
        and a.throughput >= b.throughput
        and a.quality >= b.quality
    )
    better = (
        a.bytes < b.bytes
        or a.latency_ms < b.latency_ms
        or a.throughput > b.throughput
        or a.quality > b.quality
    )
    return at_least and better


def pareto(scored: Sequence[Scored]) -> set[str]:
    """Names of the candidates no other candidate dominates."""
    return {s.name for s in scored if not any(dominates(o, s) for o in scored if o is not s)}


# Timings within this fraction of the best are a tie: the Job measures candidates in a short
# interleaved run, and on a shared node two candidates that close swap places between runs.
TIE = 0.03
# A tie goes to a smaller candidate only when it is clearly smaller (INT8 variants differ by
# a few scales and would otherwise decide a tie on noise-sized byte counts).
SMALLER = 0.9


def _near_best(objective: Objective, scored: Sequence[Scored]) -> list[Scored]:
    """The candidates indistinguishable from the best on a timed objective."""
    if objective is Objective.THROUGHPUT:
        top = max(s.throughput for s in scored)
        return [s for s in scored if s.throughput >= top * (1 - TIE)]
    fastest = min(s.latency_ms for s in scored)
    return [s for s in scored if s.latency_ms <= fastest * (1 + TIE)]


def best(objective: Objective, scored: Sequence[Scored]) -> str:
    """The candidate that is best on `objective` (the original model is one of them).

    Size is exact: fewest bytes, ties to the faster. Latency and throughput are measured:
    the best timed wins, unless a candidate within TIE of it is at most SMALLER of its size;
    then the smallest such candidate wins.

    Raises:
        ValueError: nothing to choose from.
    """
    if not scored:
        raise ValueError("no candidate to choose from")
    if objective is Objective.SIZE:
        return min(scored, key=lambda s: (s.bytes, s.latency_ms, -s.quality)).name
    if objective is Objective.THROUGHPUT:
        top = max(scored, key=lambda s: (s.throughput, -s.bytes))
    else:
        top = min(scored, key=lambda s: (s.latency_ms, s.bytes))
    smaller = [s for s in _near_best(objective, scored) if s.bytes <= SMALLER * top.bytes]
    return min(smaller, key=lambda s: s.bytes).name if smaller else top.name
