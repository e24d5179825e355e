"""`make demo`: the embedded default, end to end on one machine.

Runs exactly what a user would: `kubeaccel run -f examples/cnn.yaml --detach` (optimize with
pruning + INT8 + 2 shards, serve both shards chained on loopback), sends the held-out
digits through the endpoint, compares with the unoptimized model in onnxruntime, runs a
short load test, writes report.png, and stops everything. Exits 0 only if every step worked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.table import Table

from kubeaccel_runtime import terminal
from kubeaccel_runtime.client import InferenceClient
from kubeaccel_runtime.loadgen import LoadSpec
from kubeaccel_runtime.loadgen import run as run_load
from kubeaccel_runtime.local.run import RunPaths, read_state
from kubeaccel_runtime.optimize.chart import write_chart
from kubeaccel_runtime.optimize.source import pvc_root, resolve
from kubeaccel_runtime.specfile import load_one

SPEC = Path("examples/cnn.yaml")
WORKDIR = Path(".kubeaccel")
REPORT_PNG = Path("report.png")
BATCH = 32


def _kubeaccel(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "kubeaccel_runtime.cli", *args])


def _local_path(uri: str) -> Path:
    """The local file a file:// or pvc:// URI names, resolved as the optimizer does."""
    location = resolve(uri, cwd=Path.cwd(), pvc=pvc_root())
    if location.path is None:
        raise ValueError(f"{uri}: the demo reads local files only")
    return location.path


def served_predictions(
    endpoint: str, model: str, images: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """Top-1 classes for every image, sent through shard 0 in binary batches."""
    preds = []
    with InferenceClient(endpoint) as client:
        for start in range(0, len(images), BATCH):
            result = client.infer(model, {"input": images[start : start + BATCH]})
            preds.append(result.outputs["logits"].argmax(axis=1))
    return np.concatenate(preds)


def original_predictions(model_path: Path, images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Top-1 classes of the unoptimized model, in onnxruntime in this process."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    logits = np.asarray(session.run(None, {"input": images})[0])
    top1: np.ndarray[Any, Any] = logits.argmax(axis=1)
    return top1


def main() -> int:
    """Run the demo; 0 only if every step worked."""
    console = terminal.console()
    resource = load_one(SPEC)
    name = resource.metadata.name
    console.rule("1. optimize and serve: kubeaccel run -f examples/cnn.yaml --detach")
    if _kubeaccel("run", "-f", str(SPEC), "--detach", "--workdir", str(WORKDIR)) != 0:
        terminal.say(console, ("demo failed", "red"), ": kubeaccel run did not start")
        return 1
    paths = RunPaths(WORKDIR.resolve(), name)
    try:
        state = read_state(paths)
        base = state["endpoint"].split("/v2/")[0]
        validation_uri = resource.spec.optimization.validation.uri or ""
        with np.load(_local_path(validation_uri)) as data:
            images, labels = data["input"], data["labels"]

        console.rule(f"2. {len(images)} held-out digits through {state['endpoint']}")
        served = served_predictions(base, name, images)
        original = original_predictions(_local_path(resource.spec.source.uri), images)
        acc_before = float((original == labels).mean())
        acc_after = float((served == labels).mean())
        table = Table(title="held-out accuracy, measured now")
        table.add_column("model")
        table.add_column("top-1 accuracy", justify="right")
        table.add_row("original (onnxruntime, in-process)", f"{acc_before:.2%}")
        table.add_row("optimized, served by 2 chained shards", f"{acc_after:.2%}")
        table.add_row("agreement with the original", f"{float((served == original).mean()):.2%}")
        console.print(table)

        console.rule("3. load test: 5 s, concurrency 8, one image per request, binary")
        load = run_load(
            LoadSpec(url=base, model=name, inputs={"input": images[:1]}, concurrency=8,
                     requests=None, duration_s=5.0)
        )  # fmt: skip
        console.print(
            f"{load.requests} requests, {load.errors} errors, {load.rps:.0f} req/s, "
            f"p50 {load.p50_ms:.2f} ms, p90 {load.p90_ms:.2f} ms, p99 {load.p99_ms:.2f} ms"
        )

        console.rule("4. before/after chart")
        artifact = Path(state["artifact"])
        report = json.loads((artifact / "report.json").read_text())
        write_chart(report, REPORT_PNG)
        console.print(f"wrote {REPORT_PNG}")
        allowed_drop = resource.spec.optimization.accuracy_budget.max_accuracy_drop or 0.0
        ok = load.errors == 0 and acc_after >= acc_before - allowed_drop - 1e-9
        if not ok:
            terminal.say(console, ("demo failed", "red"), ": errors under load or accuracy lost")
        return 0 if ok else 1
    finally:
        console.rule("5. stop")
        _kubeaccel("stop", name, "--workdir", str(WORKDIR))


if __name__ == "__main__":
    sys.exit(main())
