"""bench/soak.py without a cluster: its schedule, its per-phase figures, its arguments."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


def test_thirty_minutes_are_a_baseline_one_update_and_a_deletion_every_two_minutes(
    soak: ModuleType,
) -> None:
    windows = int(soak.parse_args([]).duration // soak.parse_args([]).delete_every)
    phases = [soak.phase_of(w, windows) for w in range(windows)]
    assert windows == 15
    assert phases[0] == soak.BASELINE and phases[7] == soak.UPDATE
    assert phases.count(soak.DELETED) == 13


def test_phases_add_requests_and_errors_and_keep_the_worst_p99(soak: ModuleType) -> None:
    def window(n: int, requests: int, errors: int, p50: float, p99: float) -> dict[str, Any]:
        return {
            "window": n,
            "requests": requests,
            "errors": errors,
            "retries": n,
            "p50_ms": p50,
            "p99_ms": p99,
        }

    results = [
        window(0, 1000, 0, 2.0, 5.0),
        window(1, 900, 1, 3.0, 40.0),
        window(2, 950, 0, 2.5, 9.0),
        window(3, 980, 0, 2.0, 7.0),
    ]
    phases = soak.summarize(results, 4)
    assert phases[soak.BASELINE] == {
        "windows": 1,
        "requests": 1000,
        "errors": 0,
        "errors_per_10k": 0.0,
        "retries": 0,
        "p50_ms": 2.0,
        "p99_ms": 5.0,
    }
    assert phases[soak.UPDATE]["windows"] == 1 and phases[soak.UPDATE]["p99_ms"] == 9.0
    deleted = phases[soak.DELETED]
    assert (deleted["requests"], deleted["errors"], deleted["retries"]) == (1880, 1, 4)
    assert deleted["errors_per_10k"] == pytest.approx(5.32)
    assert (deleted["p50_ms"], deleted["p99_ms"]) == (2.5, 40.0)


def test_a_run_shorter_than_two_windows_is_refused(soak: ModuleType) -> None:
    with pytest.raises(SystemExit):
        soak.parse_args(["--duration", "100", "--delete-every", "60"])
    short = soak.parse_args(["--duration", "300", "--delete-every", "60"])
    assert (short.duration, short.delete_every) == (300.0, 60.0)


def test_memory_growth_is_measured_over_each_pods_observed_life(soak: ModuleType) -> None:
    m = soak.Memory("p", [(0.0, 100 * 2**20), (60.0, 104 * 2**20), (600.0, 110 * 2**20)])
    assert m.life == 600.0 and m.growth() == 10 * 2**20
    assert soak.Memory("q").life == 0.0
