"""Choosing among measured candidates: each objective, ties, and the Pareto front."""

from __future__ import annotations

import pytest
from kubeaccel_api.v1alpha1 import Objective
from kubeaccel_runtime.optimize.select import SMALLER, TIE, Scored, best, dominates, pareto

FP32 = Scored("fp32", bytes=1000, latency_ms=1.0, throughput=1000.0, quality=0.97)
STATIC = Scored("static-int8", bytes=270, latency_ms=0.6, throughput=1900.0, quality=0.97)
DYNAMIC = Scored("dynamic-int8", bytes=265, latency_ms=0.5, throughput=2100.0, quality=0.965)
INT4 = Scored("int4-weight-only", bytes=170, latency_ms=0.9, throughput=900.0, quality=0.966)
ALL = [FP32, STATIC, DYNAMIC, INT4]


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        (Objective.LATENCY, "dynamic-int8"),
        (Objective.THROUGHPUT, "dynamic-int8"),
        (Objective.SIZE, "int4-weight-only"),
    ],
)
def test_each_objective_picks_the_best_candidate_on_its_axis(objective, expected):
    assert best(objective, ALL) == expected


def test_throughput_and_latency_can_disagree():
    batchy = Scored("batchy", bytes=300, latency_ms=0.8, throughput=3000.0, quality=0.97)
    assert best(Objective.LATENCY, [*ALL, batchy]) == "dynamic-int8"
    assert best(Objective.THROUGHPUT, [*ALL, batchy]) == "batchy"


def test_the_original_wins_when_nothing_beats_it_on_the_objective():
    slow = Scored("static-int8", bytes=270, latency_ms=1.2, throughput=800.0, quality=0.97)
    assert best(Objective.LATENCY, [FP32, slow]) == "fp32"
    assert best(Objective.THROUGHPUT, [FP32, slow]) == "fp32"
    assert best(Objective.SIZE, [FP32, slow]) == "static-int8"


def test_size_ties_go_to_the_faster_candidate():
    a = Scored("a", bytes=200, latency_ms=0.9, throughput=1.0, quality=0.9)
    b = Scored("b", bytes=200, latency_ms=0.7, throughput=1.0, quality=0.9)
    assert best(Objective.SIZE, [a, b]) == "b"


def test_the_pareto_front_keeps_every_candidate_that_wins_on_some_axis():
    # fp32 is beaten on size, latency and throughput by static-int8 at equal quality.
    assert dominates(STATIC, FP32) and not dominates(FP32, STATIC)
    assert pareto(ALL) == {"static-int8", "dynamic-int8", "int4-weight-only"}
    assert pareto([FP32]) == {"fp32"}


def test_equal_candidates_do_not_dominate_each_other():
    twin = Scored("twin", STATIC.bytes, STATIC.latency_ms, STATIC.throughput, STATIC.quality)
    assert not dominates(STATIC, twin) and pareto([STATIC, twin]) == {"static-int8", "twin"}


def test_choosing_from_nothing_is_an_error():
    with pytest.raises(ValueError):
        best(Objective.LATENCY, [])


def test_timings_within_the_tie_margin_go_to_the_smaller_candidate():
    fp32 = Scored("fp32", bytes=1000, latency_ms=1.00, throughput=1000.0, quality=0.93)
    int8 = Scored("dynamic-int8", bytes=260, latency_ms=1.02, throughput=990.0, quality=0.93)
    assert TIE > 0.02
    assert best(Objective.LATENCY, [fp32, int8]) == "dynamic-int8"
    assert best(Objective.THROUGHPUT, [fp32, int8]) == "dynamic-int8"
    slower = Scored(
        "dynamic-int8", bytes=260, latency_ms=1.0 + 2 * TIE, throughput=800.0, quality=0.93
    )
    assert best(Objective.LATENCY, [fp32, slower]) == "fp32"
    assert best(Objective.THROUGHPUT, [fp32, slower]) == "fp32"


def test_a_tie_between_candidates_of_about_the_same_size_goes_to_the_faster():
    static = Scored("static-int8", bytes=267, latency_ms=1.02, throughput=990.0, quality=0.97)
    dynamic = Scored("dynamic-int8", bytes=268, latency_ms=1.00, throughput=1000.0, quality=0.97)
    assert SMALLER * 268 < 267
    assert best(Objective.LATENCY, [static, dynamic]) == "dynamic-int8"
    assert best(Objective.THROUGHPUT, [static, dynamic]) == "dynamic-int8"
