"""The routing contract: reports from several shard-0 pods add up to one."""

from __future__ import annotations

import pytest
from kubeaccel_api.routing import (
    LATENCY_BOUNDS_MS,
    ChainCounters,
    OutputCounters,
    Routing,
    RoutingReport,
    ShadowCounters,
    bucket_index,
    merge_reports,
    quantile_ms,
)
from pydantic import ValidationError


def _report(
    rid: str, compared: int, max_diff: float, diff_sum: float, agreed: int
) -> RoutingReport:
    return RoutingReport(
        id=rid,
        shadow=ShadowCounters(
            mirrored=compared + 1,
            compared=compared,
            errors=1,
            top1_compared=compared,
            top1_agreed=agreed,
            outputs={
                "y": OutputCounters(max_abs_diff=max_diff, abs_diff_sum=diff_sum, abs_ref_sum=100)
            },
        ),
        serving=ChainCounters(requests=10, errors=1, latency_buckets=[0, 4, 6]),
        candidate=ChainCounters(requests=2, latency_buckets=[2]),
    )


def test_reports_of_one_rollout_add_up_and_others_are_left_out() -> None:
    merged = merge_reports(
        [
            _report("r1", 10, 0.5, 5.0, 9),
            _report("r0", 99, 9.0, 9.0, 0),
            _report("r1", 30, 0.2, 15.0, 30),
        ],
        "r1",
    )
    assert merged is not None
    shadow = merged.shadow
    assert (shadow.mirrored, shadow.compared, shadow.errors) == (42, 40, 2)
    assert shadow.max_abs_diff() == 0.5
    assert shadow.mean_rel_error() == pytest.approx(20.0 / 200.0)
    assert shadow.top1_agreement() == pytest.approx(39 / 40)
    assert merged.serving == ChainCounters(requests=20, errors=2, latency_buckets=[0, 8, 12])
    assert merged.candidate.latency_buckets == [4]
    assert merge_reports([_report("r0", 1, 0, 0, 1)], "r1") is None


def test_figures_of_an_empty_comparison_are_unknown_not_zero() -> None:
    shadow = ShadowCounters()
    assert shadow.mean_rel_error() is None and shadow.top1_agreement() is None
    assert ChainCounters().p50_ms() is None


def test_a_latency_lands_in_the_bucket_whose_bound_covers_it() -> None:
    for ms in (0.01, 0.05, 0.3, 1.0, 7.5, 120.0, 4000.0):
        i = bucket_index(ms)
        assert ms <= LATENCY_BOUNDS_MS[i]
        assert i == 0 or ms > LATENCY_BOUNDS_MS[i - 1]
    assert bucket_index(10**9) == len(LATENCY_BOUNDS_MS)  # the overflow bucket


def test_the_median_of_a_histogram_is_its_bucket_bound() -> None:
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for ms in [1.0] * 6 + [10.0] * 4:
        buckets[bucket_index(ms)] += 1
    assert quantile_ms(buckets, 0.5) == LATENCY_BOUNDS_MS[bucket_index(1.0)]
    assert quantile_ms(buckets, 0.9) == LATENCY_BOUNDS_MS[bucket_index(10.0)]


def test_a_routing_that_routes_needs_a_candidate() -> None:
    with pytest.raises(ValidationError, match="candidateUrl"):
        Routing(id="r", mode="canary", percent=10)
    assert Routing().mode.value == "off"
