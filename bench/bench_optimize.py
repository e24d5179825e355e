"""Optimizer benchmark: latency/size/accuracy ratios vs FP32 raw onnxruntime, one interleaved run.

Run from the repository root after `make examples`:

    .venv/bin/python bench/bench_optimize.py                 # print the tables
    .venv/bin/python bench/bench_optimize.py --write-docs    # and update docs/benchmarks.md

What it measures (ratios of p50 latency against FP32 in the SAME interleaved run):
- MLP and transformer: dynamic and static INT8 at batch 32 (target >= 2x faster, size <= 0.27x,
  held-out accuracy drop <= 1 point);
- CNN: INT8 alone, 50 % structured pruning, and 50 % structured pruning + INT8 (target >= 1.5x
  faster, accuracy drop <= 1 point);
- auto mode: the optimizer's own choice (via the real pipeline) against the fastest variant this
  benchmark measured independently (target: within 5 %, never slower than FP32).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from benchdoc import write_section
from kubeaccel_api.v1alpha1 import CalibrationMethod, QuantizationMode
from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.optimize import stages
from kubeaccel_runtime.optimize.bench import BenchSettings, measure
from kubeaccel_runtime.optimize.config import (
    DynamicQuantConfig,
    StaticQuantConfig,
    Step,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.cpu import detect, saturation_guard
from kubeaccel_runtime.optimize.data import Samples, read_file
from kubeaccel_runtime.optimize.pipeline import RunOptions, run_optimization
from kubeaccel_runtime.optimize.session import Chain
from kubeaccel_runtime.specfile import load_one
from onnx import ModelProto

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "models"
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Optimizer"
BATCH = 32


NOTES = [
    "Notes:",
    "",
    "- Latency ratios are what onnxruntime's CPU provider does with each model in one "
    "process on shared cores; absolute milliseconds swing 2-3x between minutes here, the "
    "ratios much less. Batch-1 ratios of the MLP are dominated by per-call overhead (~0.03 ms).",
    "- Transformer INT8 size: the int8 weights alone are 0.25x; per-channel scales (one FP32 "
    "per output column), FP32 biases, LayerNorm parameters and the position embedding add "
    "~60 KB on 3.6 MB, so per-channel INT8 lands at ~0.272x (with `perChannel: false` it is "
    "0.267x) - the 0.27x target is missed by that overhead, not by unquantized matrices.",
    "- Dynamic INT8 quantizes MatMul/Gemm only (ConvInteger is 5-7x slower than FP32 Conv on "
    "this provider), so on the CNN it only speeds up the dense layers.",
    "- Static QDQ on this CNN gains far more than the 0.93-0.97x noted in TESTING.md for a "
    "memory-bound conv net: at 32x32 the 64/100-channel convolutions are compute-bound and "
    "VNNI is present, so QLinearConv pays off.",
    "- The example CNN was trained with a group-lasso penalty (see "
    "`kubeaccel_runtime/zoo`), so half its channels carry little; 50 % structured pruning "
    "needed no fine-tune (none was run) to stay inside a 1-point accuracy budget.",
    "- `auto` measures its candidates in its own interleaved run (fewer iterations) and keeps "
    "the fastest inside the budget; *chosen vs best* re-checks that choice against this "
    "benchmark's longer, independent measurement.",
]


@dataclass
class Row:
    """One variant's figures against FP32 in the same run."""

    model: str
    variant: str
    p50_b1: float
    p50_big: float
    ratio_b1: float
    ratio_big: float
    size_ratio: float
    acc_before: float
    acc_after: float
    agreement: float
    build_s: float


def raw_session(model: ModelProto, threads: int) -> ort.InferenceSession:
    """Plain onnxruntime: default graph optimizations, the same thread count as the variants."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )


def chain(model: ModelProto, threads: int) -> Chain:
    """A one-session chain over a raw onnxruntime session."""
    session = raw_session(model, threads)
    return Chain([session], [o.name for o in session.get_outputs()])


def logits(runner: Chain, samples: Samples) -> np.ndarray:
    """First output over every sample."""
    return np.concatenate([runner.run(b)[0] for b in samples.batches(64)])


def variants_for(name: str, calib: Samples, reduce_range: bool) -> dict[str, tuple[Step, ...]]:
    """The optimizations benchmarked for one example model."""
    dynamic = Step(stages.QUANTIZE_DYNAMIC, DynamicQuantConfig(reduce_range=reduce_range))
    static = Step(
        stages.QUANTIZE_STATIC,
        StaticQuantConfig(
            calibration=calib, method=CalibrationMethod.MINMAX, reduce_range=reduce_range
        ),
    )
    out: dict[str, tuple[Step, ...]] = {"dynamic-int8": (dynamic,), "static-int8": (static,)}
    if name == "cnn":
        prune = Step(stages.PRUNE_STRUCTURED, StructuredPruneConfig(sparsity=0.5))
        out |= {
            "structured0.5": (prune,),
            "structured0.5+static-int8": (prune, static),
            "structured0.5+dynamic-int8": (prune, dynamic),
        }
    return out


def bench_model(
    name: str, threads: int, settings: BenchSettings
) -> tuple[list[Row], dict[str, Chain], ModelProto]:
    """Build every variant of one example model and measure them interleaved with FP32."""
    model = onnx_io.load(MODELS / f"{name}.onnx")
    inputs = onnx_io.model_inputs(model)
    val = read_file(MODELS / f"digits-val-{name}.npz", inputs, count=100_000)
    calib = read_file(MODELS / f"digits-calib-{name}.npz", inputs, count=128)
    assert val.labels is not None
    reduce_range = saturation_guard(detect()).reduce_range
    built: dict[str, ModelProto] = {}
    build_s: dict[str, float] = {}
    for variant, steps in variants_for(name, calib, reduce_range).items():
        start = time.perf_counter()
        built[variant], _ = stages.run_steps(model, steps)
        build_s[variant] = time.perf_counter() - start
    runners = {"fp32": chain(model, threads)} | {v: chain(m, threads) for v, m in built.items()}
    feeds = {1: val.first_batch(1), BATCH: val.first_batch(BATCH)}
    timings = measure(runners, feeds, settings)
    base_out = logits(runners["fp32"], val)
    base_acc = float(np.mean(base_out.argmax(1) == val.labels))
    rows: list[Row] = []
    for variant, runner in runners.items():
        out = base_out if variant == "fp32" else logits(runner, val)
        size = model.ByteSize() if variant == "fp32" else built[variant].ByteSize()
        rows.append(
            Row(
                model=name,
                variant=variant,
                p50_b1=timings[variant][1].p50_ms,
                p50_big=timings[variant][BATCH].p50_ms,
                ratio_b1=timings[variant][1].p50_ms / timings["fp32"][1].p50_ms,
                ratio_big=timings[variant][BATCH].p50_ms / timings["fp32"][BATCH].p50_ms,
                size_ratio=size / model.ByteSize(),
                acc_before=base_acc,
                acc_after=float(np.mean(out.argmax(1) == val.labels)),
                agreement=float(np.mean(out.argmax(1) == base_out.argmax(1))),
                build_s=build_s.get(variant, 0.0),
            )
        )
    return rows, runners, model


def auto_choice(name: str, threads: int, iterations: int, work: Path) -> dict[str, Any]:
    """Run the real pipeline in auto mode on the example spec (pruning allowed for the CNN)."""
    resource = load_one(ROOT / "examples" / f"{name}.yaml")
    spec = resource.spec
    quant = spec.optimization.quantization.model_copy(update={"mode": QuantizationMode.AUTO})
    optimization = spec.optimization.model_copy(update={"quantization": quant})
    resource = resource.model_copy(
        update={"spec": spec.model_copy(update={"optimization": optimization})}
    )
    options = RunOptions(
        threads=threads,
        bench=BenchSettings(iterations=iterations, warmup=5, profile_runs=2),
        cwd=ROOT,
        measure_rss=False,
    )
    result = run_optimization(resource, work / name, progress=None, options=options, force=True)
    return result.report


def fmt_rows(rows: list[Row]) -> list[str]:
    """Markdown table lines."""
    lines = [
        f"| model | variant | p50 b1 (ms) | p50 b{BATCH} (ms) | latency b1 vs FP32 | "
        f"latency b{BATCH} vs FP32 | speed-up b{BATCH} | size vs FP32 | held-out acc. (FP32 → variant) | top-1 agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.variant} | {r.p50_b1:.3f} | {r.p50_big:.3f} | {r.ratio_b1:.2f}x | "
            f"{r.ratio_big:.2f}x | {1 / r.ratio_big:.2f}x | {r.size_ratio:.3f} | "
            f"{100 * r.acc_before:.2f} % → {100 * r.acc_after:.2f} % | {r.agreement:.3f} |"
        )
    return lines


def auto_lines(
    name: str, report: dict[str, Any], rows: list[Row]
) -> tuple[list[str], float | None]:
    """Auto's choice from the pipeline, checked against this benchmark's own measurement."""
    chosen = report["chosen"]["config"]
    own = {c["config"]: c.get("relativeLatency") for c in report["candidates"]}
    by_variant = {r.variant: r for r in rows}
    score = {v: float(np.sqrt(r.ratio_b1 * r.ratio_big)) for v, r in by_variant.items()}
    best = min(score, key=lambda v: score[v])
    mine = score.get(chosen)
    vs_best = f"{mine / score[best]:.3f}" if mine is not None else "n/a"
    measured = ", ".join(f"{k} {v:.2f}x" for k, v in own.items() if v is not None)
    acc = report["accuracy"]
    line = (
        f"| {name} | {chosen} | {measured} | {best} ({score[best]:.2f}x) | {vs_best} | "
        f"{100 * (acc['accuracyBefore'] or 0):.2f} % → {100 * (acc['accuracyAfter'] or 0):.2f} % |"
    )
    return [line], (mine / score[best] if mine is not None else None)


def _best(rows: list[Row], model: str, variants: tuple[str, ...]) -> Row:
    found = [r for r in rows if r.model == model and r.variant in variants]
    return min(found, key=lambda r: r.ratio_big)


def target_lines(rows: list[Row], autos: dict[str, tuple[str, float | None]]) -> list[str]:
    """Each issue target with the measured figure and whether it is met."""
    lines = ["| target | measured | met |", "|---|---|---|"]
    models = {r.model for r in rows}

    def add(target: str, measured: str, ok: bool) -> None:
        lines.append(f"| {target} | {measured} | {'yes' if ok else '**no**'} |")

    for name in ("mlp", "transformer"):
        if name not in models:
            continue
        r = _best(rows, name, ("dynamic-int8", "static-int8"))
        drop = 100 * (r.acc_before - r.acc_after)
        add(
            f"{name}: INT8 >= 2x faster at batch {BATCH}",
            f"{r.variant} {1 / r.ratio_big:.2f}x",
            1 / r.ratio_big >= 2,
        )
        add(f"{name}: INT8 size <= 0.27x", f"{r.variant} {r.size_ratio:.3f}x", r.size_ratio <= 0.27)
        add(f"{name}: INT8 accuracy drop <= 1 point", f"{drop:.2f} points", drop <= 1)
    if "cnn" in models:
        r = _best(rows, "cnn", ("structured0.5+static-int8", "structured0.5+dynamic-int8"))
        drop = 100 * (r.acc_before - r.acc_after)
        add(
            f"cnn: 50 % structured + INT8 >= 1.5x faster at batch {BATCH}",
            f"{r.variant} {1 / r.ratio_big:.2f}x",
            1 / r.ratio_big >= 1.5,
        )
        add("cnn: accuracy drop <= 1 point (no fine-tune)", f"{drop:.2f} points", drop <= 1)
    for name, (chosen, vs_best) in autos.items():
        ok = vs_best is not None and vs_best <= 1.05
        add(
            f"{name}: auto within 5 % of the best",
            f"{chosen}: {vs_best:.3f}" if vs_best else chosen,
            ok,
        )
    return lines


def main(argv: list[str]) -> None:
    """Run the benchmark and print (optionally write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iterations", type=int, default=60, help="timed runs per variant and batch"
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--models", default="mlp,transformer,cnn")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not (MODELS / "cnn.onnx").exists():
        sys.exit("examples/models/*.onnx missing: run `make examples` first")
    settings = BenchSettings(iterations=args.iterations, warmup=10)
    cpu = detect()
    load_start = os.getloadavg()[0]
    all_rows: list[Row] = []
    auto: list[str] = []
    autos: dict[str, tuple[str, float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as tmp:
        for name in args.models.split(","):
            print(f"== {name}", file=sys.stderr, flush=True)
            rows, _, _ = bench_model(name, args.threads, settings)
            all_rows.extend(rows)
            report = auto_choice(name, args.threads, max(10, args.iterations // 2), Path(tmp))
            lines, vs_best = auto_lines(name, report, rows)
            auto.extend(lines)
            autos[name] = (report["chosen"]["config"], vs_best)
    command = "bench/bench_optimize.py " + " ".join(shlex.quote(a) for a in argv)
    section = "\n".join(
        [
            HEADING,
            "",
            f"Command: `.venv/bin/python {command.strip()}` (after `make examples`).",
            "",
            f"Machine: {platform.machine()}, {ort.__version__=}, VNNI={cpu.vnni}, "
            f"threads={args.threads}, {args.iterations} interleaved iterations per variant and batch, "
            f"1-min load average {load_start:.1f} at the start (other jobs share the 2 cores). "
            "Ratios are p50 latency against FP32 raw onnxruntime measured in the same run; "
            "held-out accuracy is on the digits validation split (labels never seen in training).",
            "",
            *fmt_rows(all_rows),
            "",
            "Auto mode (the real pipeline, `quantization.mode: auto`; pruning 0.5 structured "
            "allowed where the example spec asks for it). *Chosen vs best* divides the chosen "
            "variant's latency score (geometric mean of batch-1 and batch-32 ratios) by the best "
            "score this benchmark measured independently above:",
            "",
            "| model | auto chose | its own candidate ratios | best in this benchmark | chosen vs best | held-out acc. |",
            "|---|---|---|---|---:|---|",
            *auto,
            "",
            "Targets of the optimizer issue, from the figures above:",
            "",
            *target_lines(all_rows, autos),
            "",
            *NOTES,
        ]
    )
    print(section)
    if args.write_docs:
        write_section(DOCS, HEADING, section)
        print(f"wrote {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
