"""`python -m kubeaccel_runtime.gpucheck --out DIR`: run every step, always write the report.

A step that fails is recorded in the report (and makes the exit status 1) instead of
ending the run: on a GPU machine lent for minutes, one run must bring back every figure
it could measure.
"""

from __future__ import annotations

import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from kubeaccel_runtime.gpucheck.targets import EXAMPLE_MODELS

STEPS = ("providers", "table", "optimize", "serve")
SERVE_PREFERENCE = ("cnn", "transformer", "mlp")


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated subset of `allowed`, in the order given (click.BadParameter if not)."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise click.BadParameter(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}"
        )
    return list(dict.fromkeys(items))


def _say(message: str) -> None:
    click.echo(f"gpu-check: {message}", err=True)


class Run:
    """The report being filled, and the steps' failures."""

    def __init__(self, command: str) -> None:
        self.started = time.perf_counter()
        self.report: dict[str, Any] = {
            "command": command,
            "startedAt": datetime.now(UTC).isoformat(timespec="seconds"),
            "errors": [],
        }

    def step(self, name: str, action: Callable[[], Any]) -> Any:
        """Run one step; an exception becomes an entry in report['errors']."""
        _say(name)
        try:
            return action()
        except Exception as exc:  # every step's failure is a finding to report
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            self.report["errors"].append(f"{name}: {last}")
            _say(f"{name} failed: {last}")
            return None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder that receives report.json, report.md and the work files.",
)
@click.option(
    "--examples",
    default="examples",
    show_default=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The examples folder (file:// URIs in it are relative to its parent).",
)
@click.option("--models", default=",".join(EXAMPLE_MODELS), show_default=True)
@click.option("--steps", default=",".join(STEPS), show_default=True)
@click.option("--iterations", default=50, show_default=True, type=click.IntRange(min=3))
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max-batch",
    default=None,
    type=click.IntRange(min=1),
    help="Largest batch measured (default: each example's limits.maxBatch).",
)
@click.option("--opt-iterations", default=20, show_default=True, type=click.IntRange(min=3))
@click.option("--concurrency", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--duration", default=15.0, show_default=True, type=click.FloatRange(min=0.5), help="Seconds."
)
@click.option(
    "--threads",
    default=None,
    type=click.IntRange(min=1),
    help="onnxruntime threads per session (default: every CPU this process may use).",
)
def main_command(
    out: Path,
    examples: Path,
    models: str,
    steps: str,
    iterations: int,
    warmup: int,
    max_batch: int | None,
    opt_iterations: int,
    concurrency: int,
    duration: float,
    threads: int | None,
) -> None:
    """Measure kubeaccel's CUDA and TensorRT paths on this machine; write OUT/report.{json,md}."""
    chosen_models = parse_list(models, EXAMPLE_MODELS, "model")
    chosen_steps = parse_list(steps, STEPS, "step")
    # Imported here so that --help and argument errors answer without loading onnxruntime.
    from kubeaccel_runtime.gpucheck import environment, report
    from kubeaccel_runtime.gpucheck.optimize_step import optimize_for_gpu
    from kubeaccel_runtime.gpucheck.providers import provider_matrix
    from kubeaccel_runtime.gpucheck.serve_step import serve_under_load
    from kubeaccel_runtime.gpucheck.targets import example, gpu_target
    from kubeaccel_runtime.gpucheck.variants import load_inputs, local_path, measure_model
    from kubeaccel_runtime.optimize.bench import BenchSettings
    from kubeaccel_runtime.serve.session import cpu_limit

    out.mkdir(parents=True, exist_ok=True)
    root = examples.resolve().parent
    cores = threads or cpu_limit()
    run = Run(shlex.join(["gpu-check", *sys.argv[1:]]))
    data = run.report
    data["settings"] = {
        "models": chosen_models,
        "steps": chosen_steps,
        "iterations": iterations,
        "warmup": warmup,
        "maxBatch": max_batch,
        "concurrency": concurrency,
        "durationSeconds": duration,
        "threads": cores,
    }
    data["environment"] = run.step("environment", environment.collect) or {}
    resources = {name: example(examples, name) for name in chosen_models}
    if "providers" in chosen_steps:
        first = resources[chosen_models[0]]
        model_path = local_path(first.spec.source.uri, root)
        data["providers"] = run.step("providers", lambda: provider_matrix(model_path, cores))
    if "table" in chosen_steps:
        bench = BenchSettings(iterations=iterations, warmup=warmup)
        data["models"] = {}
        for name, resource in resources.items():

            def measure_one(resource: Any = resource) -> dict[str, Any]:
                inputs = load_inputs(resource, root, max_batch)
                return measure_model(inputs, threads=cores, bench=bench, on_step=_say)

            data["models"][name] = run.step(f"table {name}", measure_one) or {"error": "failed"}
        data["targets"] = report.judge_targets(data["models"])
    optimized: dict[str, Any] = {}
    if "optimize" in chosen_steps or "serve" in chosen_steps:
        opt_bench = BenchSettings(iterations=opt_iterations, warmup=3)
        for name, resource in resources.items():

            def optimize_one(resource: Any = resource) -> dict[str, Any]:
                target = gpu_target(resource)
                return optimize_for_gpu(target, out / "artifacts", root, cores, opt_bench)

            result = run.step(f"optimize {name} for a GPU target", optimize_one)
            optimized[name] = result or {"error": "failed", "reason": "CheckError"}
        data["optimize"] = optimized
    if "serve" in chosen_steps:
        ready = [n for n in SERVE_PREFERENCE if n in optimized and "error" not in optimized[n]]
        if ready:
            name = ready[0]
            data["serve"] = run.step(
                f"serve {name} at concurrency {concurrency}",
                lambda: serve_under_load(
                    gpu_target(resources[name]),
                    Path(optimized[name]["path"]),
                    out / "work",
                    concurrency=concurrency,
                    duration_s=duration,
                    threads=cores,
                ),
            )
        else:
            data["errors"].append("serve: no example was optimized, nothing to serve")
    data["elapsedSeconds"] = round(time.perf_counter() - run.started, 1)
    json_path, md_path = report.write_report(out, data)
    _say(f"wrote {json_path} and {md_path}")
    if data["errors"]:
        sys.exit(1)


def main() -> int:
    """Entry point of `python -m kubeaccel_runtime.gpucheck`."""
    main_command()  # click exits by itself
    return 0
