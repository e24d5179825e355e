"""The routing contract between the operator and shard 0 of a serving chain.

During a shadow or canary rollout the operator writes a `Routing` document into a
ConfigMap that every shard-0 pod mounts; shard 0 of the serving chain applies it (mirror a
share of live requests to the candidate and compare, or answer a share from the candidate)
and reports what it measured on `GET /v2/rollout` as a `RoutingReport`. The operator adds
up the reports of every shard-0 pod (`merge_reports`) and judges them. Counters restart
whenever the routing id changes, so a report always belongs to one rollout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import StrEnum

from pydantic import Field, model_validator

from kubeaccel_api.v1alpha1 import ApiModel, field_rule

ROUTING_FILE = "routing.json"
REPORT_PATH = "/v2/rollout"
# Latency histogram: bucket i counts latencies <= LATENCY_BOUNDS_MS[i]; one more bucket holds
# the rest. Geometric steps of 25 % from 50 us to about 65 s: a merged median is within 12 %.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(0.05 * 1.25**i for i in range(64))


class RoutingMode(StrEnum):
    """What shard 0 of the serving chain does with live requests."""

    OFF = "off"
    SHADOW = "shadow"
    CANARY = "canary"


class Routing(ApiModel):
    """What the operator asks of shard 0 of the serving chain."""

    id: str = Field(default="", max_length=128, description="Rollout id; new id, new counters.")
    mode: RoutingMode = Field(default=RoutingMode.OFF, description="off, shadow or canary.")
    chain: str = Field(default="a", max_length=8, description="Chain whose shard 0 applies it.")
    candidate_url: str | None = Field(
        default=None,
        pattern=r"^http://.+",
        max_length=2048,
        description="Base URL of the candidate chain's shard 0.",
    )
    percent: float = Field(
        default=0.0, ge=0, le=100, description="Share of live requests mirrored or routed."
    )

    @model_validator(mode="after")
    def _candidate_needed(self) -> Routing:
        if self.mode is not RoutingMode.OFF and self.candidate_url is None:
            raise field_rule("candidateUrl", f"is required when mode is {self.mode.value}")
        return self


class ChainCounters(ApiModel):
    """Requests one chain answered: count, failures, latency histogram."""

    requests: int = Field(default=0, ge=0, description="Requests sent to this chain.")
    errors: int = Field(default=0, ge=0, description="Requests it failed (5xx, no answer).")
    latency_buckets: list[int] = Field(
        default_factory=list,
        description="Counts per LATENCY_BOUNDS_MS bucket plus an overflow bucket.",
    )

    def p50_ms(self) -> float | None:
        """Median latency (ms) from the histogram, None without samples."""
        return quantile_ms(self.latency_buckets, 0.5)


class OutputCounters(ApiModel):
    """How far one output of the candidate is from the serving chain's, summed so far."""

    max_abs_diff: float = Field(default=0.0, ge=0, description="Largest absolute difference.")
    abs_diff_sum: float = Field(default=0.0, ge=0, description="Sum of absolute differences.")
    abs_ref_sum: float = Field(default=0.0, ge=0, description="Sum of absolute serving values.")
    non_finite: int = Field(
        default=0, ge=0, description="NaN/Inf in the candidate where the serving chain is finite."
    )


class ShadowCounters(ApiModel):
    """Mirrored requests and how the candidate's answers compare."""

    mirrored: int = Field(default=0, ge=0, description="Requests sent to the candidate.")
    compared: int = Field(default=0, ge=0, description="Answered by both and compared.")
    errors: int = Field(default=0, ge=0, description="Candidate failures on mirrored requests.")
    skipped: int = Field(
        default=0, ge=0, description="Not mirrored: too many mirrors were in flight already."
    )
    top1_compared: int = Field(default=0, ge=0, description="Rows whose top-1 class was compared.")
    top1_agreed: int = Field(default=0, ge=0, description="Rows with the same top-1 class.")
    outputs: dict[str, OutputCounters] = Field(default_factory=dict, description="Per output name.")

    def max_abs_diff(self) -> float:
        """Largest absolute difference of any output."""
        return max((o.max_abs_diff for o in self.outputs.values()), default=0.0)

    def mean_rel_error(self) -> float | None:
        """Relative L1 error of the worst output (None before any comparison)."""
        rel = [o.abs_diff_sum / max(o.abs_ref_sum, 1e-12) for o in self.outputs.values()]
        return max(rel) if rel else None

    def top1_agreement(self) -> float | None:
        """Share of compared rows with the same top-1 class (None for non-classifiers)."""
        return self.top1_agreed / self.top1_compared if self.top1_compared else None

    def non_finite(self) -> int:
        """Candidate NaN/Inf values where the serving chain's were finite."""
        return sum(o.non_finite for o in self.outputs.values())


class RoutingReport(ApiModel):
    """What one shard-0 pod measured since it applied the routing `id`."""

    id: str = Field(default="", description="Routing id the counters belong to.")
    mode: RoutingMode = Field(default=RoutingMode.OFF, description="Mode in force.")
    chain: str = Field(default="a", description="This server's chain.")
    percent: float = Field(default=0.0, description="Share mirrored or routed now.")
    problem: str | None = Field(
        default=None, description="Why the routing file could not be applied, if it could not."
    )
    shadow: ShadowCounters = Field(default_factory=ShadowCounters, description="Shadow mode.")
    serving: ChainCounters = Field(default_factory=ChainCounters, description="Canary mode.")
    candidate: ChainCounters = Field(default_factory=ChainCounters, description="Canary mode.")


def _add_buckets(a: Sequence[int], b: Sequence[int]) -> list[int]:
    size = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(size)]


def _add_chain(a: ChainCounters, b: ChainCounters) -> ChainCounters:
    return ChainCounters(
        requests=a.requests + b.requests,
        errors=a.errors + b.errors,
        latency_buckets=_add_buckets(a.latency_buckets, b.latency_buckets),
    )


def add_output(a: OutputCounters, b: OutputCounters) -> OutputCounters:
    """Two comparisons of one output as one: largest of the largest, sums added."""
    return OutputCounters(
        max_abs_diff=max(a.max_abs_diff, b.max_abs_diff),
        abs_diff_sum=a.abs_diff_sum + b.abs_diff_sum,
        abs_ref_sum=a.abs_ref_sum + b.abs_ref_sum,
        non_finite=a.non_finite + b.non_finite,
    )


def _add_shadow(a: ShadowCounters, b: ShadowCounters) -> ShadowCounters:
    outputs = dict(a.outputs)
    for name, counters in b.outputs.items():
        outputs[name] = add_output(outputs[name], counters) if name in outputs else counters
    return ShadowCounters(
        mirrored=a.mirrored + b.mirrored,
        compared=a.compared + b.compared,
        errors=a.errors + b.errors,
        skipped=a.skipped + b.skipped,
        top1_compared=a.top1_compared + b.top1_compared,
        top1_agreed=a.top1_agreed + b.top1_agreed,
        outputs=outputs,
    )


def merge_reports(reports: Iterable[RoutingReport], routing_id: str) -> RoutingReport | None:
    """The sum of every report for `routing_id` (pods still on another id are left out)."""
    total: RoutingReport | None = None
    for report in reports:
        if report.id != routing_id:
            continue
        if total is None:
            total = report
            continue
        total = total.model_copy(
            update={
                "shadow": _add_shadow(total.shadow, report.shadow),
                "serving": _add_chain(total.serving, report.serving),
                "candidate": _add_chain(total.candidate, report.candidate),
                "problem": total.problem or report.problem,
            }
        )
    return total


def bucket_index(latency_ms: float) -> int:
    """The histogram bucket of one latency."""
    if latency_ms <= LATENCY_BOUNDS_MS[0]:
        return 0
    index = math.ceil(math.log(latency_ms / LATENCY_BOUNDS_MS[0], 1.25) - 1e-9)
    return min(index, len(LATENCY_BOUNDS_MS))


def quantile_ms(buckets: Sequence[int], q: float) -> float | None:
    """The q-quantile (0-1) of a histogram, as its bucket's upper bound; None when empty."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        seen += count
        if seen >= rank and count:
            return LATENCY_BOUNDS_MS[min(i, len(LATENCY_BOUNDS_MS) - 1)]
    return LATENCY_BOUNDS_MS[-1]
