"""Shadow mirroring: what mirroring live requests to a candidate costs the serving chain.

    .venv/bin/python bench/bench_mirror.py --write

Three `kubeaccel serve` processes of the same model serve the same load in interleaved
rounds: without mirroring, mirroring 10 % of requests and mirroring 100 % of them to a
fourth process (the candidate, same model). Every figure is a ratio against the
no-mirroring server measured in the same round; the table gives the median over rounds.

With `--pin` the serving processes and the load generator are pinned to the first CPU and
the candidate to the other(s), so the candidate's inference does not compete with the
server being measured; on a machine shared with other work that makes every variant share
one CPU with strangers too, so processes float by default (the candidate's own work is
then part of the measured cost, as on a node that runs both chains). Load: closed loop,
binary tensors, batch 1, at concurrency 1 (latency) and 8.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from bench_serve import DOC, Server, build_mlp, load_cnn, start_kubeaccel, write_artifact
from benchdoc import write_section
from kubeaccel_runtime.loadgen import LoadSpec, run

HEADING = "## Shadow mirroring"
VARIANTS = (("none", None), ("10%", "10"), ("100%", "100"))
TARGET_ADDED_P50 = 0.10  # at 10 % mirroring


def _pin(pid: int, cpus: set[int]) -> None:
    """Pin a process (before it starts threads, so they inherit it)."""
    os.sched_setaffinity(pid, cpus)


def split_cpus(pin: bool) -> tuple[set[int], set[int]]:
    """(CPUs of the measured servers and the load generator, CPUs of the candidate)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def measure(server: Server, x: np.ndarray, concurrency: int, seconds: float) -> dict[str, Any]:
    spec = LoadSpec(
        url=server.url,
        model=server.model,
        inputs={"input": x},
        binary=True,
        concurrency=concurrency,
        requests=None,
        duration_s=seconds,
        warmup=50,
        engine="raw",
        timeout_s=60,
    )
    result = run(spec).as_dict()
    if result["errors"]:
        raise RuntimeError(f"{server.label}: {result['errors']} failed requests: {result}")
    return result


def mirror_counts(server: Server) -> dict[str, int]:
    import httpx

    shadow = httpx.get(f"{server.url}/v2/rollout", timeout=5).json()["shadow"]
    return {k: int(shadow[k]) for k in ("mirrored", "compared", "errors", "skipped")}


def bench_model(
    name: str,
    model: onnx.ModelProto,
    rounds: int,
    seconds: float,
    root: Path,
    cpus: tuple[set[int], set[int]],
) -> dict[str, Any]:
    """Interleaved rounds of the three variants against one candidate."""
    artifact = write_artifact(root / name, name, model, batching=False)
    x = np.random.default_rng(0).random(
        (1, 784) if name == "mlp" else (1, 1, 32, 32), dtype=np.float32
    )
    measured_cpus, other_cpus = cpus
    _pin(0, measured_cpus)
    candidate = start_kubeaccel("candidate", artifact, name)
    _pin(candidate.proc.pid, other_cpus)
    servers: dict[str, Server] = {}
    try:
        candidate.wait_ready()
        for label, percent in VARIANTS:
            extra = ["--candidate", candidate.url, "--mirror-percent", percent] if percent else []
            servers[label] = start_kubeaccel(label, artifact, name, *extra)
            _pin(servers[label].proc.pid, measured_cpus)
        for server in servers.values():
            server.wait_ready()
        results: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for concurrency in (1, 8):
            per: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in VARIANTS}
            for r in range(rounds):
                order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
                for label, _ in order:
                    per[label].append(measure(servers[label], x, concurrency, seconds))
            results[concurrency] = per
        counts = {label: mirror_counts(servers[label]) for label, p in VARIANTS if p}
    finally:
        for server in [*servers.values(), candidate]:
            server.stop()
    return {"results": results, "counts": counts}


def summarize(results: dict[int, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Per concurrency and variant: median p50/p99 and the median per-round ratio to none."""
    rows = []
    for concurrency, per in results.items():
        base = per["none"]
        for label, _ in VARIANTS:
            runs = per[label]
            rows.append(
                {
                    "concurrency": concurrency,
                    "variant": label,
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                    "rps": statistics.median(r["rps"] for r in runs),
                    "p50_ratio": statistics.median(
                        r["p50_ms"] / b["p50_ms"] for r, b in zip(runs, base, strict=True)
                    ),
                    "p99_ratio": statistics.median(
                        r["p99_ms"] / b["p99_ms"] for r, b in zip(runs, base, strict=True)
                    ),
                }
            )
    return rows


NOTES = [
    "Reading:",
    "",
    "- Per mirrored request the serving process encodes the inputs, sends them over a "
    "pooled raw keep-alive connection, decodes the answer and compares it. Measured "
    "in-process for the MLP (784 inputs, 10 logits): encode 0.02 ms, compare 0.05 ms, a raw "
    "round trip with encode and decode 0.22-0.35 ms of CPU; the first version used httpx, "
    "which cost 1.6-2.0 ms of CPU per round trip, hence the raw connections.",
    "- Without `--pin` the candidate's own inference runs on the same CPUs and is part of "
    "the figures; on a node where the candidate's pods have CPU of their own the serving "
    "chain pays only its own part. At 100 % mirroring the candidate does as much work as "
    "the server measured, and mirrors beyond 64 in flight per server are skipped (counted).",
    "- Absolute times swing with the machine's load (see the load averages); compare the "
    "ratios, measured in the same rounds.",
    "",
]


def render(
    report: dict[str, Any],
    args: argparse.Namespace,
    load_before: float,
    cpus: tuple[set[int], set[int]],
) -> str:
    measured, other = cpus
    lines = [
        HEADING,
        "",
        f"Command: `.venv/bin/python bench/bench_mirror.py --rounds {args.rounds} "
        f"--seconds {args.seconds:g}{' --pin' if args.pin else ''} --write`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work "
        f"(1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        f"the end). "
        + (
            f"Serving processes and the load generator pinned to CPU {sorted(measured)}, the "
            f"candidate to CPU {sorted(other)}"
            if measured != other
            else "Processes not pinned (the candidate's inference shares the CPUs)"
        )
        + f"; 1 intra-op thread each; closed loop, binary "
        f"tensors, batch 1, {args.seconds:g} s per variant and round, {args.rounds} "
        "interleaved rounds (order alternating). Ratios are against the server without "
        "mirroring in the same round (median over rounds); added = ratio - 1.",
        "",
    ]
    targets = []
    for name, data in report.items():
        rows = summarize(data["results"])
        lines += [
            f"### {name}",
            "",
            "| concurrency | mirroring | p50 ms | p99 ms | req/s | p50 vs none | p99 vs none |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['concurrency']} | {row['variant']} | {row['p50_ms']:.3f} | "
                f"{row['p99_ms']:.3f} | {row['rps']:.0f} | {row['p50_ratio']:.3f}x | "
                f"{row['p99_ratio']:.3f}x |"
            )
        counts = ", ".join(
            f"{label}: {c['mirrored']} mirrored, {c['compared']} compared, {c['errors']} "
            f"errors, {c['skipped']} skipped"
            for label, c in data["counts"].items()
        )
        lines += ["", f"Mirror counters at the end ({counts}).", ""]
        for row in rows:
            if row["variant"] == "10%":
                added = row["p50_ratio"] - 1
                hit = "HIT" if added <= TARGET_ADDED_P50 else "MISSED"
                targets.append(
                    f"- {name}, concurrency {row['concurrency']}: added p50 at 10 % mirroring "
                    f"= {added:+.1%} (target <= +10 %) {hit}"
                )
    lines[len(lines) :] = ["### Targets", "", *targets, "", *NOTES]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--models", default="mlp,cnn", help="Comma-separated: mlp, cnn.")
    ap.add_argument("--pin", action="store_true", help="Pin servers and candidate apart.")
    ap.add_argument("--write", action="store_true", help=f"Update {DOC}.")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    cpus = split_cpus(args.pin)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, _ = (build_mlp(), "mlp") if name == "mlp" else load_cnn()
            started = time.monotonic()
            report[name] = bench_model(name, model, args.rounds, args.seconds, Path(tmp), cpus)
            print(f"{name}: {time.monotonic() - started:.0f} s", flush=True)
    section = render(report, args, load_before, cpus)
    print(section)
    if args.write:
        write_section(DOC, HEADING, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
