"""Soak: load through a 2-shard chain on a real cluster while its pods are deleted and updated.

    KUBECONFIG=... .venv/bin/python bench/soak.py                  # 30 min, a pod every 2 min
    KUBECONFIG=... .venv/bin/python bench/soak.py --duration 300 --delete-every 60   # smoke

Needs the chart installed (the e2e release, or any) and the runtime image on the nodes.
It applies the example CNN as `soak-cnn` (2 shards x 2 replicas, PodDisruptionBudgets) in
namespace `kubeaccel-soak` (or uses --name of a Ready model there), then:

- one client pod of the runtime image sends requests for the whole run through the model's
  Service (loadgen, httpx engine, the client retry contract of kubeaccel_runtime.retry),
  reporting one window of --delete-every seconds at a time;
- in the middle of every window but the first, one shard pod is deleted (shards in turn,
  the youngest pod of the shard, so one replica of each shard lives as long as it can);
  the window in the middle of the run gets a runtime-only update (batching delay) instead;
- the resident memory (VmRSS of PID 1, via kubectl exec: no metrics-server needed) of
  every shard pod and of the operator is sampled at each window boundary.

Prints requests, errors (after retries), retries, p50/p99 per phase (baseline, pod
deleted, runtime update: p50 is the median of the windows' p50, p99 the worst window's),
and each pod's memory at its first and last sample. Exits 1 when a bound is broken:
no error may reach the client, and no pod observed for --memory-min-life seconds or more
may grow by more than --memory-growth (fraction) + --memory-slack-mib.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))

from kubeaccel_e2e import (  # noqa: E402
    READY_TIMEOUT,
    RELEASE_NAMESPACE,
    Kube,
    cluster_problem,
    condition,
    sh,
    wait_until,
)
from kubeaccel_faults import (  # noqa: E402
    client_output,
    is_ready,
    operator_pod,
    rss_bytes,
    service_url,
    shard_pods,
    start_client,
    wait_client_started,
)

# Runs in the client pod: one loadgen run per window, one JSON line per window.
# argv: url model windows window_seconds concurrency
WINDOWS_SCRIPT = """
import json, sys, time
import httpx
from kubeaccel_runtime.loadgen import LoadSpec, inputs_from_metadata, run
from kubeaccel_runtime.retry import CLIENT_POLICY
url, model = sys.argv[1], sys.argv[2]
windows, window_s, concurrency = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
meta = httpx.get(f"{url}/v2/models/{model}", timeout=30).json()
inputs = inputs_from_metadata(meta, 1)
print("started", flush=True)
for window in range(windows):
    spec = LoadSpec(url=url, model=model, inputs=inputs, concurrency=concurrency, requests=None,
                    duration_s=window_s, warmup=0, engine="httpx", retry=CLIENT_POLICY,
                    check_first=False)
    print(json.dumps({"window": window, **run(spec).as_dict()}), flush=True)
"""

BASELINE, DELETED, UPDATE = "baseline", "pod deleted", "runtime update"


@dataclass
class Memory:
    """RSS samples of one pod: (seconds since the start, bytes)."""

    pod: str
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def life(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0.0

    def growth(self) -> int:
        return self.samples[-1][1] - self.samples[0][1] if self.samples else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--namespace", default="kubeaccel-soak")
    ap.add_argument("--name", default="soak-cnn", help="model name (applied unless it exists)")
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of load in all")
    ap.add_argument("--delete-every", type=float, default=120.0, help="window length, seconds")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--cpu", default="200m", help="CPU request of each shard pod")
    ap.add_argument("--memory-growth", type=float, default=0.10, help="allowed RSS growth")
    ap.add_argument("--memory-slack-mib", type=float, default=32.0, help="plus this much")
    ap.add_argument(
        "--memory-min-life", type=float, default=300.0, help="judge pods seen this long"
    )
    ap.add_argument("--keep", action="store_true", help="leave the model running afterwards")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args(argv)
    if args.duration < 2 * args.delete_every:
        ap.error("--duration must cover at least two windows of --delete-every")
    return args


def phase_of(window: int, windows: int) -> str:
    """What happened in a window: nothing (the first), the update (the middle), a deletion."""
    if window == 0:
        return BASELINE
    return UPDATE if window == windows // 2 else DELETED


def example_resource(name: str, cpu: str) -> dict[str, Any]:
    """The example CNN (the optimizer image carries its model) with 2 replicas per shard."""
    text = (ROOT / "examples" / "cnn.yaml").read_text()
    res = next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == "AcceleratedModel")
    res = copy.deepcopy(res)
    res["metadata"] = {"name": name}
    runtime = res["spec"].setdefault("runtime", {})
    runtime["replicas"] = 2
    runtime["resources"] = {**runtime.get("resources", {}), "cpu": cpu}
    return dict(res)


def ensure_model(kube: Kube, args: argparse.Namespace) -> dict[str, Any]:
    """The Ready model to soak (applied when absent)."""
    sh(["kubectl", "create", "namespace", kube.namespace], check=False)
    sh(
        [
            "kubectl",
            "label",
            "--overwrite",
            "namespace",
            kube.namespace,
            "pod-security.kubernetes.io/enforce=restricted",
        ]
    )
    if kube.get("acceleratedmodel", args.name, ignore_missing=True) is None:
        kube.apply(example_resource(args.name, args.cpu))

    def ready() -> dict[str, Any] | None:
        obj = kube.get("acceleratedmodel", args.name)
        cond = condition(obj, "Ready")
        fresh = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
        return obj if fresh and cond and cond["status"] == "True" else None

    model: dict[str, Any] = wait_until(f"{args.name} Ready", ready, READY_TIMEOUT, interval=5)
    return model


def sample_memory(kube: Kube, name: str, memory: dict[str, Memory], now: float) -> None:
    """One RSS sample of every live shard pod and of the operator."""
    targets = [(kube, p["metadata"]["name"]) for p in shard_pods(kube, name) if is_ready(p)]
    targets.append((Kube(RELEASE_NAMESPACE), operator_pod()["metadata"]["name"]))
    for where, pod in targets:
        rss = rss_bytes(where, pod)
        if rss is not None:
            memory.setdefault(pod, Memory(pod)).samples.append((now, rss))


def delete_youngest(kube: Kube, name: str, shard: int) -> str:
    """Delete the most recently started pod of a shard; its name."""
    pods = sorted(shard_pods(kube, name, shard), key=lambda p: p["metadata"]["creationTimestamp"])
    victim = str(pods[-1]["metadata"]["name"])
    kube("delete", "pod", victim, "--wait=false")
    return victim


def runtime_update(kube: Kube, name: str) -> int:
    """A runtime-only change (rolls the pods, no new Job); the new generation."""
    obj = kube.get("acceleratedmodel", name)
    delay = float(obj["spec"].get("runtime", {}).get("batching", {}).get("maxDelayMs", 2.0))
    patch = {"spec": {"runtime": {"batching": {"maxDelayMs": delay + 1.0}}}}
    kube("patch", "am", name, "--type=merge", "-p", json.dumps(patch))
    return int(kube.get("acceleratedmodel", name)["metadata"]["generation"])


def summarize(windows: list[dict[str, Any]], count: int) -> dict[str, dict[str, Any]]:
    """Per phase: windows, requests, errors, retries, p50 (median of windows), p99 (worst)."""
    phases: dict[str, dict[str, Any]] = {}
    for phase in (BASELINE, DELETED, UPDATE):
        mine = [w for w in windows if phase_of(w["window"], count) == phase]
        if not mine:
            continue
        requests = sum(w["requests"] for w in mine)
        errors = sum(w["errors"] for w in mine)
        phases[phase] = {
            "windows": len(mine),
            "requests": requests,
            "errors": errors,
            "errors_per_10k": round(1e4 * errors / max(1, requests), 2),
            "retries": sum(w["retries"] for w in mine),
            "p50_ms": round(statistics.median(w["p50_ms"] for w in mine), 2),
            "p99_ms": round(max(w["p99_ms"] for w in mine), 2),
        }
    return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = cluster_problem()
    if problem is not None:
        print(f"soak: {problem}", file=sys.stderr)
        return 2
    kube = Kube(args.namespace)
    windows = int(args.duration // args.delete_every)
    model = ensure_model(kube, args)
    jobs_before = kube.names("jobs", f"kubeaccel.io/model={args.name}")
    client = start_client(
        kube,
        "soak",
        WINDOWS_SCRIPT,
        [
            service_url(kube, args.name),
            args.name,
            str(windows),
            str(args.delete_every),
            str(args.concurrency),
        ],
        labels={"kubeaccel.io/client": "true"},
    )
    memory: dict[str, Memory] = {}
    wait_client_started(kube, client)
    start = time.monotonic()
    events: list[str] = []
    sample_memory(kube, args.name, memory, 0.0)
    for window in range(1, windows):
        # The middle of the window: one disruption, then the next boundary's memory sample.
        time.sleep(max(0.0, start + (window + 0.5) * args.delete_every - time.monotonic()))
        at = time.monotonic() - start
        if phase_of(window, windows) == UPDATE:
            events.append(
                f"{at:7.1f}s runtime update -> generation {runtime_update(kube, args.name)}"
            )
        else:
            shard = window % 2
            events.append(f"{at:7.1f}s deleted {delete_youngest(kube, args.name, shard)}")
        print(events[-1], flush=True)
        time.sleep(max(0.0, start + (window + 1) * args.delete_every - time.monotonic()))
        sample_memory(kube, args.name, memory, time.monotonic() - start)
    lines = client_output(kube, client, args.delete_every * 2 + 300).splitlines()
    results = [json.loads(line) for line in lines if line.startswith("{")]
    phases = summarize(results, windows)
    final = kube.get("acceleratedmodel", args.name)
    jobs_after = kube.names("jobs", f"kubeaccel.io/model={args.name}")

    limit = args.memory_growth
    slack = args.memory_slack_mib * 2**20
    judged = {p: m for p, m in memory.items() if m.life >= args.memory_min_life}
    too_big = [p for p, m in judged.items() if m.growth() > limit * m.samples[0][1] + slack]
    errors = sum(ph["errors"] for ph in phases.values())

    print(
        f"\nsoak of {args.name}: {windows} windows of {args.delete_every:g} s, "
        f"concurrency {args.concurrency}, client retry contract on"
    )
    print(
        f"{'phase':<16}{'windows':>8}{'requests':>10}{'errors':>8}{'per 10k':>9}"
        f"{'retries':>9}{'p50 ms':>9}{'p99 ms':>9}"
    )
    for phase, ph in phases.items():
        print(
            f"{phase:<16}{ph['windows']:>8}{ph['requests']:>10}{ph['errors']:>8}"
            f"{ph['errors_per_10k']:>9}{ph['retries']:>9}{ph['p50_ms']:>9}{ph['p99_ms']:>9}"
        )
    print(f"\n{'pod':<48}{'first MiB':>10}{'last MiB':>10}{'seen s':>8}")
    for pod, m in sorted(memory.items()):
        print(
            f"{pod:<48}{m.samples[0][1] / 2**20:>10.1f}{m.samples[-1][1] / 2**20:>10.1f}"
            f"{m.life:>8.0f}"
        )
    print(
        f"\nbounds: 0 errors reach the client (got {errors}); RSS growth <= {limit:.0%} + "
        f"{args.memory_slack_mib:g} MiB for pods seen >= {args.memory_min_life:g} s "
        f"({len(judged)} pods; over: {too_big or 'none'})"
    )
    ready = condition(final, "Ready")
    print(
        f"end: Ready={ready and ready['status']}, Jobs {sorted(jobs_before)} -> {sorted(jobs_after)}"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "windows": results,
                    "phases": phases,
                    "events": events,
                    "memory": {p: m.samples for p, m in memory.items()},
                    "jobs_before": sorted(jobs_before),
                    "jobs_after": sorted(jobs_after),
                    "model": model["metadata"]["name"],
                },
                indent=2,
            )
        )
    if not args.keep:
        kube("delete", "am", args.name, "--wait=false", check=False)
    ok = errors == 0 and not too_big and jobs_after == jobs_before
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
