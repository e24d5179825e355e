"""The before/after chart of a report (matplotlib, imported only when a chart is asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_chart(report: dict[str, Any], path: Path) -> Path:
    """Draw latency, size and candidate figures of `report` into a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = report["latency"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    labels = [f"batch {latency['before'][k]['batch']}" for k in ("batch1", "maxBatch")]
    before = [latency["before"][k]["p50Ms"] for k in ("batch1", "maxBatch")]
    after = [latency["after"][k]["p50Ms"] for k in ("batch1", "maxBatch")]
    x = range(len(labels))
    axes[0].bar([i - 0.2 for i in x], before, width=0.4, label="before")
    axes[0].bar([i + 0.2 for i in x], after, width=0.4, label="after")
    axes[0].set_xticks(list(x), labels)
    axes[0].set_ylabel("p50 latency (ms)")
    axes[0].set_title(f"latency (speedup {report.get('speedup')}x)")
    axes[0].legend()
    sizes = report["sizes"]
    axes[1].bar(["before", "after"], [sizes["bytesBefore"] / 1e6, sizes["bytesAfter"] / 1e6])
    axes[1].set_ylabel("MB")
    axes[1].set_title(f"size (ratio {sizes['sizeRatio']})")
    measured = [c for c in report["candidates"] if c.get("relativeLatency") is not None]
    names = [c["config"] for c in measured]
    values = [c["relativeLatency"] for c in measured]
    colors = ["tab:green" if c["chosen"] else "tab:gray" for c in measured]
    axes[2].barh(names, values, color=colors)
    axes[2].axvline(1.0, color="black", linewidth=0.8)
    axes[2].set_xlabel("latency vs original (lower is faster)")
    axes[2].set_title(f"candidates\nchosen: {report['chosen']['config']}", fontsize=10)
    fig.suptitle(f"{report['modelName']} · artifact {report['artifactId']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
