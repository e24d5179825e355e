"""Optimize an example for a GPU target with the real pipeline (what the Job runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_runtime.optimize.bench import BenchSettings
from kubeaccel_runtime.optimize.errors import OptimizeError
from kubeaccel_runtime.optimize.pipeline import RunOptions, run_optimization


def summarize(report: dict[str, Any], path: Path, seconds: float) -> dict[str, Any]:
    """The figures of an optimization report the check shows."""
    return {
        "artifactId": report["artifactId"],
        "path": str(path),
        "target": report.get("target"),
        "executionProvider": report["executionProvider"],
        "chosen": report["chosen"]["config"],
        "candidates": [
            {
                "config": c["config"],
                "relativeLatency": c.get("relativeLatency"),
                "withinBudget": c["withinBudget"],
                "accuracy": c.get("accuracy"),
                "error": c.get("error"),
            }
            for c in report["candidates"]
        ],
        "speedup": report.get("speedup"),
        "speedupMaxBatch": report.get("speedupMaxBatch"),
        "sizeRatio": report["sizes"]["sizeRatio"],
        "accuracy": report["accuracy"],
        "engineCache": report.get("engineCache"),
        "seconds": round(seconds, 1),
    }


def optimize_for_gpu(
    resource: AcceleratedModel, out: Path, root: Path, threads: int, bench: BenchSettings
) -> dict[str, Any]:
    """Run the optimization Job's pipeline on `resource` into `out`; errors are findings."""
    started = time.perf_counter()
    options = RunOptions(threads=threads, bench=bench, cwd=root, measure_rss=False)
    try:
        result = run_optimization(resource, out, force=True, options=options)
    except OptimizeError as exc:
        return {"error": str(exc), "reason": exc.reason}
    return summarize(result.report, result.path, time.perf_counter() - started)
