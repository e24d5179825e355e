"""Operator benchmark: the real `kubeaccel-operator` process against the KMock API emulator.

Measures, with the emulator acting as the Job controller + kubelet and the Deployment
controller (they complete Jobs and roll out Deployments as soon as they appear):

1. latency, one resource at a time (N resources, default 50): apply -> Job created, and
   Job complete -> first shard Deployment created; p50/p95 in ms. Times are the
   emulator's own write timestamps, so no polling error is included.
2. a burst of M resources (default 200) applied at once: total time until every one is
   Ready=True, the same two latencies under that load, and the operator's peak RSS
   (VmHWM of its process).

Each resource is 2 shards (2 Deployments, 3 Services, 2 PDBs, a ConfigMap, a PVC, a Job).
The emulator is in-process Python (one thread); at 200 resources it is part of what is
measured, so a real API server is not slower than this.

    .venv/bin/python bench/bench_operator.py --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "test_operator"))

from benchdoc import write_section  # noqa: E402
from kmock_support import Api, EmulatorThread, OperatorProcess, wait_for  # noqa: E402

NS = "bench"
SPEC: dict[str, Any] = {
    "source": {"uri": "pvc://models/mnist.onnx", "sha256": "5f" * 32},
    "optimization": {"partition": {"shards": 2}, "quantization": {"mode": "fp16"}},
    "runtime": {"replicas": 2, "resources": {"gpus": 1}},
    "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
}
SECTION = "## Operator"


def manifest(name: str) -> dict[str, Any]:
    """One AcceleratedModel."""
    return {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": SPEC,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ready_names(api: Api) -> set[str]:
    """Names of the AcceleratedModels whose Ready condition is True."""
    out = set()
    for obj in api.list("AcceleratedModel", NS):
        conds = (obj.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            out.add(obj["metadata"]["name"])
    return out


def wait_all_ready(api: Api, names: list[str], timeout: float) -> None:
    """Poll until every resource is Ready; name the stragglers at the deadline."""
    deadline = time.monotonic() + timeout
    missing = set(names)
    while time.monotonic() < deadline:
        missing = set(names) - ready_names(api)
        if not missing:
            return
        time.sleep(0.25)
    raise AssertionError(f"not Ready after {timeout}s: {sorted(missing)[:20]}")


def latencies(emu: EmulatorThread, names: list[str]) -> tuple[list[float], list[float]]:
    """(apply -> Job created, Job complete -> first Deployment) in ms, from write times."""
    first: dict[tuple[str, str, str], float] = {}
    complete: dict[str, float] = {}
    for event, kind, _, name, at in emu.writes():
        if event == "ADDED":
            first.setdefault((kind, name, "add"), at)
        elif event == "MODIFIED" and kind == "Job":
            complete[name] = at  # the last write to a Job is the controller marking it Complete
    to_job, to_deploy = [], []
    for name in names:
        applied = first[("AcceleratedModel", name, "add")]
        job = next(n for (k, n, _) in first if k == "Job" and n.startswith(f"{name}-opt-"))
        to_job.append((first[("Job", job, "add")] - applied) * 1000)
        deployed = first[("Deployment", f"{name}-shard-0", "add")]
        to_deploy.append((deployed - complete[job]) * 1000)
    return to_job, to_deploy


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(sequential: int, burst: int, workers: int) -> dict[str, Any]:
    """Both measurements, each with a fresh emulator and operator process."""
    results: dict[str, Any] = {"sequential": sequential, "burst": burst, "workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        # 1. One at a time: unloaded latency.
        with EmulatorThread(auto_controllers=True) as emu:
            config = Path(tmp, "kubeconfig-1")
            config.write_text(emu.kubeconfig())
            op = OperatorProcess(str(config), str(Path(tmp, "op1.log")), workers=str(workers))
            op.start()
            api = Api(emu.url)
            names = [f"seq-{i:03d}" for i in range(sequential)]
            for name in names:
                api.create(manifest(name))
                wait_for(lambda n=name: n in ready_names(api), f"{name} Ready", timeout=120)
            to_job, to_deploy = latencies(emu, names)
            op.stop()
        results["seq_apply_to_job_ms"] = to_job
        results["seq_complete_to_deploy_ms"] = to_deploy

        # 2. A burst: throughput and memory.
        with EmulatorThread(auto_controllers=True) as emu:
            config = Path(tmp, "kubeconfig-2")
            config.write_text(emu.kubeconfig())
            op = OperatorProcess(str(config), str(Path(tmp, "op2.log")), workers=str(workers))
            op.start()
            idle_rss = peak_rss_mb(op.proc.pid)
            api = Api(emu.url)
            names = [f"burst-{i:03d}" for i in range(burst)]
            op_cpu, own_cpu = cpu_seconds(op.proc.pid), time.process_time()
            started = time.monotonic()
            for name in names:
                api.create(manifest(name))
            applied = time.monotonic() - started
            wait_all_ready(api, names, timeout=600)
            total = time.monotonic() - started
            op_cpu = cpu_seconds(op.proc.pid) - op_cpu
            own_cpu = time.process_time() - own_cpu
            rss = peak_rss_mb(op.proc.pid)
            to_job, to_deploy = latencies(emu, names)
            objects = sum(len(api.list(k, NS)) for k in Api.PATHS if k not in ("Event",))
            op.stop()
        results.update(
            burst_total_s=total,
            burst_apply_s=applied,
            burst_apply_to_job_ms=to_job,
            burst_complete_to_deploy_ms=to_deploy,
            operator_cpu_s=op_cpu,
            emulator_cpu_s=own_cpu,
            operator_idle_rss_mb=idle_rss,
            operator_peak_rss_mb=rss,
            objects=objects,
        )
    return results


def summarise(values: list[float]) -> str:
    """p50 / p95 / max."""
    return f"{statistics.median(values):.0f} / {percentile(values, 95):.0f} / {max(values):.0f}"


def markdown(r: dict[str, Any], command: str) -> str:
    """The docs/benchmarks.md section."""
    cpu = platform.processor() or platform.machine()
    return f"""{SECTION}

Command: `{command}`

The real operator process (`python -m kubeaccel_operator`, kopf, {r["workers"]} handler
threads) against the KMock API emulator (`tests/test_operator/kmock_support.py`), which also
plays the Job controller + kubelet and the Deployment controller: a Job completes and a
Deployment becomes available as soon as it is written. Each resource has 2 shards x 2
replicas: a ConfigMap, a PVC, a Job, 3 Services, 2 Deployments, 2 PodDisruptionBudgets.
Latencies come from the emulator's own write timestamps (no polling error). Machine:
{cpu}, 2 cores shared with other work; the emulator is single-threaded Python in the
benchmark process, so at 200 resources it is part of what is measured.

| measurement | p50 / p95 / max (ms) | target |
|---|---:|---|
| apply -> Job created, one at a time ({r["sequential"]} resources) | {summarise(r["seq_apply_to_job_ms"])} | <= 1000 ms |
| Job complete -> Deployments created, one at a time ({r["sequential"]} resources) | {summarise(r["seq_complete_to_deploy_ms"])} | <= 1000 ms |
| apply -> Job created, burst of {r["burst"]} | {summarise(r["burst_apply_to_job_ms"])} | |
| Job complete -> Deployments created, burst of {r["burst"]} | {summarise(r["burst_complete_to_deploy_ms"])} | |

| {r["burst"]} resources applied at once | value | target |
|---|---:|---|
| all Ready=True after | {r["burst_total_s"]:.1f} s (applying took {r["burst_apply_s"]:.1f} s) | |
| objects in the namespace at the end | {r["objects"]} | |
| operator peak RSS (VmHWM) | {r["operator_peak_rss_mb"]:.0f} MiB (idle after start: {r["operator_idle_rss_mb"]:.0f} MiB) | <= 250 MB |
| CPU time: operator / emulator + benchmark | {r["operator_cpu_s"]:.1f} s / {r["emulator_cpu_s"]:.1f} s | |

Under the burst the two processes share the 2 cores and the single-threaded emulator is
the busier one, so the burst latencies are an upper bound for this machine rather than
the operator's own cost: one at a time, both steps take tens of milliseconds.
"""


def main() -> None:
    """Run, print a JSON summary and optionally write docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sequential", type=int, default=50, help="resources applied one at a time"
    )
    parser.add_argument("--burst", type=int, default=200, help="resources applied at once")
    parser.add_argument("--workers", type=int, default=8, help="KUBEACCEL_WORKERS")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    results = run(args.sequential, args.burst, args.workers)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=1))
    for key in (
        "seq_apply_to_job_ms",
        "seq_complete_to_deploy_ms",
        "burst_apply_to_job_ms",
        "burst_complete_to_deploy_ms",
    ):
        print(f"{key}: p50/p95/max {summarise(results[key])}")
    if args.write_docs:
        command = ".venv/bin/python bench/bench_operator.py --write-docs"
        if (args.sequential, args.burst, args.workers) != (50, 200, 8):
            command += (
                f" --sequential {args.sequential} --burst {args.burst} --workers {args.workers}"
            )
        write_section(ROOT / "docs" / "benchmarks.md", SECTION, markdown(results, command))


if __name__ == "__main__":
    main()
