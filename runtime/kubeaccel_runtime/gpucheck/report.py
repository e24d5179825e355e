"""The check's report: targets judged from the figures, report.json and report.md."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

JSON_FILE = "report.json"
MARKDOWN_FILE = "report.md"
# The target: FP16 on CUDA at least 1.5x FP32 on CUDA at max batch.
FP16_TARGET = 1.5
TARGET_MODELS = ("cnn", "transformer")


def _variant(model: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    return next((v for v in model.get("variants", []) if v["variant"] == name), None)


def judge_targets(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """FP16 CUDA vs FP32 CUDA at max batch on the CNN and the transformer: met, missed, or
    not measured (with the reason)."""
    out: list[dict[str, Any]] = []
    for name in TARGET_MODELS:
        target = f"{name}: FP16 CUDA >= {FP16_TARGET}x FP32 CUDA at max batch"
        model = models.get(name)
        fp16 = _variant(model, "fp16-cuda") if model else None
        fp32 = _variant(model, "fp32-cuda") if model else None
        if model is None or "error" in model:
            why = model.get("error") if model else "model not measured"
            out.append({"target": target, "measured": None, "met": None, "why": why})
            continue
        missing = [v for v in (fp32, fp16) if v is None or v["status"] != "measured"]
        if missing:
            why = "; ".join(
                f"{v['label']}: {v.get('reason')}" for v in (fp32, fp16) if v and v in missing
            )
            out.append({"target": target, "measured": None, "met": None, "why": why})
            continue
        assert fp16 is not None
        ratio = fp16["speedupVsFp32Cuda"]["maxBatch"]
        out.append(
            {
                "target": target,
                "measured": ratio,
                "met": ratio is not None and ratio >= FP16_TARGET,
                "why": None,
            }
        )
    return out


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}{suffix}"
    return f"{value}{suffix}"


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _numeric(cell: str) -> bool:
    return not cell or cell[0].isdigit() or cell.startswith(("—", "b"))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; columns holding only figures are right-aligned."""
    align = [
        "---:" if rows and i > 0 and all(_numeric(r[i]) for r in rows) else "---"
        for i in range(len(header))
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return lines


def _environment(env: Mapping[str, Any]) -> list[str]:
    gpus = env.get("gpus") or []
    gpu = (
        ", ".join(
            f"{g['name']} ({g.get('memoryMiB')} MiB, compute {g.get('computeCapability')})"
            for g in gpus
        )
        or f"none ({env.get('nvidiaSmiProblem')})"
    )
    driver = ", ".join(sorted({str(g["driver"]) for g in gpus})) or "—"
    ort = env["onnxruntime"]
    dists = ", ".join(f"{k} {v}" for k, v in ort["distributions"].items() if v) or "—"
    libs = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items() if v) or "—"
    return _table(
        ["what", "value"],
        [
            ["GPU", gpu],
            ["driver", driver],
            ["onnxruntime", f"{ort['version']} ({dists})"],
            ["providers offered", ", ".join(ort["availableProviders"])],
            ["NVIDIA libraries", libs],
            ["Python / CPUs", f"{env['python']} / {env['cpus']}"],
            ["kubeaccel", env["kubeaccelVersion"]],
        ],
    )


def _providers(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return _table(
        ["executionProvider", "server asks for", "session.get_providers()", "error"],
        [
            [
                r["executionProvider"],
                ", ".join(r.get("requested") or []) or "—",
                ", ".join(r.get("sessionProviders") or []) or "—",
                (r.get("error") or "")[:200],
            ]
            for r in rows
        ],
    )


def _variants(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows: list[list[str]] = []
    for name, model in models.items():
        if "error" in model:
            rows.append([name, "—", "error", "", "", "", "", "", "", model["error"][:200]])
            continue
        big = model["maxBatch"]
        for v in model["variants"]:
            if v["status"] != "measured":
                rows.append(
                    [name, v["label"], "skipped", "", "", "", "", "", "", v["reason"][:200]]
                )
                continue
            acc = v.get("accuracy") or {}
            cpu_x, cuda_x = v["speedupVsFp32Cpu"], v["speedupVsFp32Cuda"]
            rows.append(
                [
                    name,
                    v["label"],
                    f"{_fmt(v['latency']['batch1']['p50Ms'])} / {_fmt(v['latency']['maxBatch']['p50Ms'])}",
                    f"b{big}",
                    f"{_fmt(cpu_x['batch1'], 'x')} / {_fmt(cpu_x['maxBatch'], 'x')}",
                    _fmt(cuda_x["maxBatch"], "x"),
                    _pct(acc.get("accuracyAfter")),
                    _fmt(acc.get("top1Agreement")),
                    _fmt(acc.get("maxAbsDiff")),
                    "",
                ]
            )
    return _table(
        [
            "model",
            "variant",
            "p50 ms (b1 / max)",
            "max batch",
            "speed-up vs FP32 CPU (b1 / max)",
            "speed-up vs FP32 CUDA (max)",
            "held-out accuracy",
            "top-1 agreement",
            "max abs diff",
            "skipped because",
        ],
        rows,
    )


def _optimized(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "—", "—", "—", "—", "—", f"{r.get('reason')}: {r['error'][:200]}"])
            continue
        acc = r["accuracy"]
        engines = r.get("engineCache")
        rows.append(
            [
                name,
                r["executionProvider"],
                r["chosen"],
                f"{_fmt(r['speedup'], 'x')} / {_fmt(r['speedupMaxBatch'], 'x')}",
                f"{_pct(acc.get('accuracyBefore'))} → {_pct(acc.get('accuracyAfter'))}",
                "—"
                if not engines
                else f"{len(engines['files'])} files, {engines['rebuiltOnReload']} rebuilt on reload",
                ", ".join(
                    f"{c['config']} {_fmt(c['relativeLatency'], 'x')}" for c in r["candidates"]
                ),
            ]
        )
    return _table(
        [
            "model",
            "provider used",
            "chosen",
            "speed-up (b1 / max)",
            "held-out accuracy",
            "engine cache",
            "candidates (latency vs FP32)",
        ],
        rows,
    )


def _serve(serve: Mapping[str, Any]) -> list[str]:
    if not serve:
        return ["(not run)"]
    lines: list[str] = []
    events = serve.get("logEvents", {})
    for shard, docs in events.items():
        for doc in docs:
            if doc.get("msg") == "session created":
                lines.append(
                    f"- {shard}: session on {doc.get('in_use')}, created in {doc.get('load_s')} s"
                )
    if serve.get("error"):
        lines.append(f"- error: {serve['error'][:500]}")
    load = serve.get("load")
    if load:
        lines += [""] if lines else []
        lines += _table(
            [
                "shards",
                "concurrency",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "engine files built at start",
            ],
            [
                [
                    str(serve["shards"]),
                    str(serve["concurrency"]),
                    _fmt(load["rps"]),
                    _fmt(load["p50_ms"]),
                    _fmt(load["p99_ms"]),
                    str(load["errors"]),
                    str(len(serve.get("engineFilesAddedOrRewritten", []))),
                ]
            ],
        )
    return lines


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown, for docs/benchmarks.md and a quick read."""
    lines = [
        "# kubeaccel GPU check",
        "",
        f"Command: `{report['command']}` ({report['elapsedSeconds']:.0f} s, "
        f"started {report['startedAt']}).",
        "",
        "## Machine",
        "",
        *_environment(report["environment"]),
        "",
        "## Execution providers (what `kubeaccel serve` asks for and gets)",
        "",
        *_providers(report.get("providers", [])),
        "",
        "## FP32 CPU, FP32 CUDA, FP16 CUDA, TensorRT FP16/INT8 (one interleaved run per model)",
        "",
        "Ratios divide p50 latencies measured in the same run; accuracy is top-1 on the "
        "labelled held-out split; agreement and max abs diff are against FP32 CPU.",
        "",
        *_variants(report.get("models", {})),
        "",
        "## Targets",
        "",
        *[
            f"- {t['target']}: "
            + (
                f"{t['measured']}x, {'met' if t['met'] else 'MISSED'}"
                if t["measured"] is not None
                else f"not measured ({t['why']})"
            )
            for t in report.get("targets", [])
        ],
        "",
        "## Optimized for a GPU target (the optimization Job's pipeline, `auto` precision)",
        "",
        *_optimized(report.get("optimize", {})),
        "",
        "## Served with `kubeaccel serve` under load",
        "",
        *_serve(report.get("serve", {})),
        "",
    ]
    if report.get("errors"):
        lines += ["## Steps that failed", "", *[f"- {e}" for e in report["errors"]], ""]
    return "\n".join(lines)


def write_report(out: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write report.json and report.md into `out` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / JSON_FILE, out / MARKDOWN_FILE
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(to_markdown(report))
    return json_path, md_path
