"""Latency, throughput, peak memory and the slowest operators of a model or shard chain.

Variants are measured interleaved (each iteration runs every variant once, rotating the
order) so that the 2-3x swings of a shared machine hit all of them alike; compare ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kubeaccel_api.v1alpha1 import GraphOptimizationLevel
from onnx import ModelProto

from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.optimize.data import Feeds
from kubeaccel_runtime.optimize.session import Chain, SessionSettings, create

TOP_OPS = 5


@dataclass(frozen=True)
class BenchSettings:
    """How long to measure: small defaults keep the Job quick on 2 cores."""

    iterations: int = 20
    warmup: int = 3
    profile_runs: int = 5
    rss_timeout_s: float = 120.0


@dataclass(frozen=True)
class Latency:
    """Latency percentiles and throughput at one batch size."""

    batch: int
    p50_ms: float
    p90_ms: float
    throughput: float
    iterations: int

    def to_report(self) -> dict[str, Any]:
        """camelCase fields for report.json."""
        return {
            "batch": self.batch,
            "p50Ms": round(self.p50_ms, 4),
            "p90Ms": round(self.p90_ms, 4),
            "throughput": round(self.throughput, 2),
            "iterations": self.iterations,
        }


def _latency(batch: int, times_s: list[float]) -> Latency:
    arr = np.asarray(times_s) * 1000.0
    p50 = float(np.percentile(arr, 50))
    return Latency(
        batch=batch,
        p50_ms=p50,
        p90_ms=float(np.percentile(arr, 90)),
        throughput=batch / (p50 / 1000.0) if p50 > 0 else 0.0,
        iterations=len(times_s),
    )


def measure(
    variants: Mapping[str, Chain],
    feeds_by_batch: Mapping[int, Feeds],
    settings: BenchSettings,
) -> dict[str, dict[int, Latency]]:
    """p50/p90/throughput of every variant at every batch size, measured interleaved."""
    names = list(variants)
    result: dict[str, dict[int, Latency]] = {name: {} for name in names}
    for batch, feeds in feeds_by_batch.items():
        for name in names:
            for _ in range(settings.warmup):
                variants[name].run(feeds)
        times: dict[str, list[float]] = {name: [] for name in names}
        for it in range(settings.iterations):
            shift = it % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                variants[name].run(feeds)
                times[name].append(time.perf_counter() - start)
        for name in names:
            result[name][batch] = _latency(batch, times[name])
    return result


_KERNEL = "_kernel_time"


def _kernel_events(
    models: Sequence[ModelProto], feeds: Feeds, settings: SessionSettings, runs: int
) -> list[dict[str, Any]]:
    """onnxruntime profiler events of every node kernel over `runs` runs of the chain."""
    events: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kubeaccel-prof-") as tmp:
        sessions = [
            create(m, settings, profile_prefix=Path(tmp, f"shard{i}")) for i, m in enumerate(models)
        ]
        chain = Chain(sessions, [o.name for o in sessions[-1].get_outputs()])
        for _ in range(max(1, runs)):
            chain.run(feeds)
        for session in sessions:
            for event in json.loads(Path(session.end_profiling()).read_text()):
                if event.get("cat") == "Node" and str(event.get("name", "")).endswith(_KERNEL):
                    events.append(event)
    return events


def top_ops(
    models: Sequence[ModelProto], feeds: Feeds, settings: SessionSettings, runs: int
) -> list[dict[str, Any]]:
    """The slowest operator types from onnxruntime's profiler (time per run, share of total)."""
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in _kernel_events(models, feeds, settings, runs):
        op = str(event.get("args", {}).get("op_name", "?"))
        totals[op] += float(event.get("dur", 0)) / 1000.0
        calls[op] += 1
    grand = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:TOP_OPS]
    n = max(1, runs)
    return [
        {
            "opType": op,
            "msPerRun": round(ms / n, 4),
            "percent": round(100.0 * ms / grand, 1),
            "callsPerRun": calls[op] // n,
        }
        for op, ms in ranked
    ]


def node_times(
    model: ModelProto, feeds: Feeds, settings: SessionSettings, runs: int
) -> dict[str, float]:
    """Measured milliseconds per run of every node, by node name.

    Graph optimizations are disabled for this measurement so that every node of `model`
    runs as itself (fusions would rename or merge them); the times are for balancing.
    """
    plain = SessionSettings(
        providers=settings.providers,
        threads=settings.threads,
        level=GraphOptimizationLevel.DISABLED,
    )
    times: dict[str, float] = defaultdict(float)
    for event in _kernel_events([model], feeds, plain, runs):
        times[str(event["name"])[: -len(_KERNEL)]] += float(event.get("dur", 0)) / 1000.0
    return {name: ms / max(1, runs) for name, ms in times.items()}


def peak_rss(
    models: Sequence[ModelProto], feeds: Feeds, settings: BenchSettings, session: SessionSettings
) -> dict[str, int] | None:
    """Peak RSS of a fresh process that loads the models and runs one batch (Linux /proc)."""
    if not Path("/proc/self/status").exists():
        return None
    with tempfile.TemporaryDirectory(prefix="kubeaccel-rss-") as tmp:
        paths = []
        for i, model in enumerate(models):
            path = Path(tmp, f"m{i}.onnx")
            onnx_io.save(model, path)
            paths.append(str(path))
        feeds_path = Path(tmp, "feeds.npz")
        np.savez(feeds_path, **feeds)  # type: ignore[arg-type]
        cmd = [
            sys.executable,
            "-m",
            "kubeaccel_runtime.optimize.rss",
            str(session.threads),
            ",".join(session.providers),
            str(feeds_path),
            *paths,
        ]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=settings.rss_timeout_s, check=True
            )
        except (subprocess.SubprocessError, OSError):
            return None
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {str(k): int(v) for k, v in figures.items()}
