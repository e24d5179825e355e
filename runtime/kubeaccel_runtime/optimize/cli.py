"""`kubeaccel optimize`: the optimization Job's entry point and the user command."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
from kubeaccel_api.validation import InvalidResource
from rich.console import Console
from rich.table import Table

from kubeaccel_runtime import terminal
from kubeaccel_runtime.artifact_manifest import ArtifactInvalid
from kubeaccel_runtime.termination import write_termination_log


class RichProgress:
    """Prints one line per finished stage, with a spinner while a stage runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._started: dict[str, float] = {}
        self._status: Any = None

    def start(self, stage: str, detail: str = "") -> None:
        """Show a spinner for the running stage."""
        self._started[stage] = time.perf_counter()
        if self._status is not None:
            self._status.stop()
        self._status = terminal.status(self.console, (stage, "bold"), f" {detail}")
        self._status.start()

    def done(self, stage: str, detail: str = "") -> None:
        """Replace the spinner by a finished line with the stage's duration."""
        if self._status is not None:
            self._status.stop()
            self._status = None
        took = time.perf_counter() - self._started.pop(stage, time.perf_counter())
        terminal.say(
            self.console,
            terminal.OK,
            " ",
            (stage, "bold"),
            f" {detail} ",
            (f"({took:.1f}s)", "dim"),
        )

    def close(self) -> None:
        """Stop any spinner left running (after a failure)."""
        if self._status is not None:
            self._status.stop()
            self._status = None


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:.4g}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def _interval(figure: dict[str, Any] | None) -> str:
    if not figure:
        return "—"
    return f"{figure['value']:.4f} (95 % CI {figure['low']:.4f}..{figure['high']:.4f})"


def summary_table(report: dict[str, Any]) -> Table:
    """The headline figures of a report."""
    s = report["summary"]
    gate = s.get("gate") or {}
    table = Table(title=f"{report['modelName']} → artifact {report['artifactId']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("chosen", s.get("chosen")),
        ("objective", s.get("objective") or "— (mode is not auto)"),
        ("execution provider", s.get("executionProvider")),
        ("size before → after", f"{_fmt(s.get('bytesBefore'))} → {_fmt(s.get('bytesAfter'))} B"),
        ("size ratio", _fmt(s.get("sizeRatio"))),
        (
            "p50 batch 1 before → after",
            f"{_fmt(s.get('latencyBeforeMs'))} → {_fmt(s.get('latencyAfterMs'))} ms",
        ),
        ("speedup (batch 1)", _fmt(s.get("speedup"), "x")),
        ("speedup (max batch)", _fmt(report.get("speedupMaxBatch"), "x")),
        ("max abs diff", _fmt(s.get("maxAbsDiff"))),
        ("validation samples", _fmt(gate.get("samples"))),
        ("top-1 agreement", _interval(gate.get("top1Agreement"))),
        (
            "accuracy before → after",
            f"{_fmt(s.get('accuracyBefore'))} → {_fmt(s.get('accuracyAfter'))}",
        ),
        ("accuracy drop", _interval(gate.get("accuracyDrop"))),
        ("budget resolved by the data", "—" if not gate else ("yes" if gate["resolved"] else "NO")),
        ("kept in FP32", ", ".join(report["chosen"].get("keptFp32") or []) or "—"),
        ("shards", str(report["partition"]["shards"])),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def gate_warning(report: dict[str, Any]) -> str | None:
    """The warning to print when the validation data cannot resolve the accuracy budget."""
    gate = report["summary"].get("gate") or {}
    if gate.get("resolved", True):
        return None
    return (
        "accuracy gate: the validation data cannot resolve the budget, so the figures above "
        f"decide it on noise: {gate.get('message')}. Give optimization.validation more "
        "labelled samples (see docs/accuracy-gate.md)."
    )


def print_report(console: Console, report: dict[str, Any], *, candidates: bool = True) -> None:
    """The summary table, the candidates table and any accuracy-gate warning."""
    console.print(summary_table(report))
    if candidates:
        console.print(candidates_table(report))
        for c in report["candidates"]:
            if c.get("keptFp32"):
                terminal.say(console, f"{c['config']}: kept in FP32: {', '.join(c['keptFp32'])}")
    warning = gate_warning(report)
    if warning:
        terminal.say(console, (f"⚠ {warning}", "yellow"))


def candidates_table(report: dict[str, Any]) -> Table:
    """Every candidate on size, batch-1 latency, max-batch throughput and accuracy."""
    table = Table(title="candidates (* Pareto-optimal inside the budget)")
    before = report["sizes"]["bytesBefore"] or 1
    for col in (
        "config",
        "size vs original",
        "b1 latency vs original",
        "max-batch items/s",
        "accuracy / top-1 agr.",
        "max abs diff",
        "in budget",
        "pareto",
        "chosen",
    ):
        table.add_column(col)
    for c in report["candidates"]:
        acc = c.get("accuracy") or {}
        rel = c.get("relativeLatency")
        quality = acc.get("accuracyAfter")
        if quality is None:
            quality = acc.get("top1Agreement")
        table.add_row(
            c["config"],
            f"{c['bytes'] / before:.3f}" if "bytes" in c else "—",
            f"{rel:.3f}x" if rel is not None else (c.get("error") or "—")[:40],
            f"{c['throughput']:.0f}" if c.get("throughput") is not None else "—",
            f"{quality:.4f}" if quality is not None else "—",
            f"{acc['maxAbsDiff']:.3g}" if "maxAbsDiff" in acc else "—",
            "yes" if c["withinBudget"] else "no",
            "*" if c.get("pareto") else "",
            "✓" if c["chosen"] else "",
        )
    return table


def _fail(err: Console, message: str, reason: str) -> NoReturn:
    terminal.say(err, (f"✗ optimize failed ({reason}):", "red"), f" {message}")
    write_termination_log({"error": message, "reason": reason})
    sys.exit(1)


def _store_for(err: Console, uri: str) -> tuple[Any, Any]:
    """(client, destination) for --publish, or exit 1 with the reason."""
    from kubeaccel_runtime import objectstore

    try:
        return objectstore.connect(objectstore.S3Settings.from_env()), objectstore.S3Uri.parse(uri)
    except (objectstore.ObjectStoreError, ValueError) as exc:
        _fail(err, f"--publish: {exc}", "InvalidArguments")


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@click.command()
@click.option(
    "--spec",
    "spec_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="AcceleratedModel YAML/JSON file.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory that receives <artifact-id>/.",
)
@click.option("--force", is_flag=True, help="Rebuild even if the artifact already exists.")
@click.option(
    "--report-png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw a before/after chart into this PNG file.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="onnxruntime threads per session (default: the CPUs this process may use).",
)
@click.option(
    "--bench-iterations",
    type=click.IntRange(min=3),
    default=None,
    help="Timed runs per variant and batch (default 20).",
)
@click.option(
    "--thorough",
    is_flag=True,
    help="Measure longer (100 iterations, 10 warm-up) for steadier figures.",
)
@click.option("--no-rss", is_flag=True, help="Skip the peak-RSS subprocess measurement.")
@click.option(
    "--publish",
    default=None,
    metavar="S3_URI",
    help="Also upload the artifact to <S3_URI>/<artifact-id>/ (AWS_* variables configure it).",
)
def optimize(
    spec_path: Path,
    out_dir: Path,
    force: bool,
    report_png: Path | None,
    threads: int | None,
    bench_iterations: int | None,
    thorough: bool,
    no_rss: bool,
    publish: str | None,
) -> None:
    """Optimize the model a spec names, gate it on accuracy, and write the artifact."""
    from kubeaccel_runtime.optimize.bench import BenchSettings
    from kubeaccel_runtime.optimize.errors import OptimizeError
    from kubeaccel_runtime.optimize.pipeline import RunOptions, run_optimization
    from kubeaccel_runtime.specfile import load_one

    # Job logs are not terminals; a fixed width keeps the tables readable there.
    err = terminal.console(stderr=True, width=None if sys.stderr.isatty() else 120)
    progress = RichProgress(err)
    bench = BenchSettings(iterations=100, warmup=10) if thorough else BenchSettings()
    if bench_iterations is not None:
        bench = BenchSettings(iterations=bench_iterations, warmup=bench.warmup)
    options = RunOptions(threads=threads or _default_threads(), bench=bench, measure_rss=not no_rss)
    # A wrong destination or a missing client fails now, not after minutes of optimizing.
    store = _store_for(err, publish) if publish is not None else None
    try:
        resource = load_one(spec_path)
        result = run_optimization(
            resource, out_dir, force=force, progress=progress, options=options
        )
    except InvalidResource as exc:
        progress.close()
        _fail(err, "invalid spec:\n  " + "\n  ".join(exc.problems), "InvalidSpec")
    except OptimizeError as exc:
        progress.close()
        _fail(err, str(exc), exc.reason)
    except ArtifactInvalid as exc:
        progress.close()
        _fail(err, str(exc), "ArtifactInvalid")
    except BaseException:
        progress.close()
        write_termination_log({"error": "internal error (see logs)", "reason": "InternalError"})
        raise
    if result.reused:
        terminal.say(
            err,
            f"artifact {result.path.name} already exists and verifies; nothing to do (--force rebuilds)",
        )
    print_report(err, result.report)
    if report_png is not None:
        from kubeaccel_runtime.optimize.chart import write_chart

        terminal.say(err, f"chart: {write_chart(result.report, report_png)}")
    if store is not None:
        from kubeaccel_runtime import objectstore

        client, parent = store
        try:
            published, uploaded = objectstore.upload_artifact(client, result.path, parent)
        except (objectstore.ObjectStoreError, ArtifactInvalid) as exc:
            _fail(err, str(exc), "PublishFailed")
        done = "published" if uploaded else "already published (kept as it is)"
        terminal.say(err, terminal.OK, f" {done} {published}")
    write_termination_log(result.summary)
    click.echo(str(result.path))
