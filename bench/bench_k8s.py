"""Timings of the example on a real cluster: apply -> Ready, and pod created -> shard Ready.

Needs a cluster from KUBECONFIG with the chart installed and the images loaded (what
`make e2e` sets up; on these machines `../shared/tools/cluster/up`, `make images`,
`make e2e-load E2E_CLUSTER=kubeconfig E2E_LOADER=cluster-tool`, then `helm install`).
Each run applies `examples/cnn.yaml` into a fresh namespace and polls the resource every
0.5 s; pod times come from the API server's own timestamps (1 s resolution).

    .venv/bin/python bench/bench_k8s.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cnn.yaml"
DEADLINE = 600.0


def kubectl(*args: str, input: str | None = None) -> str:
    """Run kubectl; raise with its stderr on failure."""
    proc = subprocess.run(
        ["kubectl", *args], input=input, capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def stamp(value: str) -> float:
    """Seconds since the epoch of an API server timestamp."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pod_ready_seconds(pod: dict[str, Any]) -> float | None:
    """creationTimestamp -> Ready=True of one pod, or None if it is not Ready."""
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond["type"] == "Ready" and cond["status"] == "True":
            return stamp(cond["lastTransitionTime"]) - stamp(pod["metadata"]["creationTimestamp"])
    return None


def one_run(resource: dict[str, Any]) -> dict[str, Any]:
    """Apply the example in a fresh namespace; phase times, pod times, `kubectl get am`."""
    ns = f"kubeaccel-bench-{uuid.uuid4().hex[:6]}"
    name = resource["metadata"]["name"]
    kubectl("create", "namespace", ns)
    kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    try:
        start = time.monotonic()
        kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(resource))
        phases: dict[str, float] = {}
        table: list[str] = []
        while time.monotonic() - start < DEADLINE:
            obj = json.loads(kubectl("-n", ns, "get", "am", name, "-o", "json"))
            status = obj.get("status") or {}
            phase = status.get("phase")
            if phase and phase not in phases:
                phases[phase] = time.monotonic() - start
                table.append(kubectl("-n", ns, "get", "am", name).splitlines()[-1])
            if phase == "Failed":
                raise RuntimeError(f"{name} failed: {status.get('message')}")
            if phase == "Ready":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{name} not Ready after {DEADLINE:.0f}s: {phases}")
        pods = json.loads(
            kubectl("-n", ns, "get", "pods", "-l", f"kubeaccel.io/model={name}", "-o", "json")
        )["items"]
        shard_pods = [p for p in pods if "kubeaccel.io/shard" in p["metadata"]["labels"]]
        job_pods = [p for p in pods if p not in shard_pods]
        job_seconds = [
            stamp(c["state"]["terminated"]["finishedAt"])
            - stamp(p["metadata"]["creationTimestamp"])
            for p in job_pods
            for c in p["status"].get("containerStatuses") or []
            if (c.get("state") or {}).get("terminated")
        ]
        return {
            "phases": phases,
            "shard_pod_ready_s": [s for s in map(pod_ready_seconds, shard_pods) if s is not None],
            "job_pod_s": job_seconds,
            "table": table,
            "wide": kubectl("-n", ns, "get", "am", name, "-o", "wide"),
        }
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")


def main() -> None:
    """Run the example `--runs` times and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    resource = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d)
    runs = [one_run(resource) for _ in range(args.runs)]
    node = json.loads(kubectl("get", "nodes", "-o", "json"))["items"][0]
    info = node["status"]["nodeInfo"]
    print(
        f"node: {node['status']['allocatable']['cpu']} CPUs, kubelet {info['kubeletVersion']}, "
        f"{info['containerRuntimeVersion']}; {args.runs} runs of {EXAMPLE.relative_to(ROOT)}"
    )
    for i, run in enumerate(runs, 1):
        marks = ", ".join(f"{p} {t:.1f}s" for p, t in run["phases"].items())
        pods = ", ".join(f"{s:.0f}" for s in run["shard_pod_ready_s"])
        print(
            f"run {i}: {marks}; shard pods created -> Ready: {pods} s; Job pod {run['job_pod_s']}"
        )

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}" if values else "-"

    print(f"median apply -> Ready: {med([r['phases']['Ready'] for r in runs])} s")
    print(
        f"median pod created -> shard Ready: {med([s for r in runs for s in r['shard_pod_ready_s']])} s"
    )
    print(f"median Job pod created -> finished: {med([s for r in runs for s in r['job_pod_s']])} s")
    print("kubectl get am, at each phase of the last run:")
    print("\n".join(runs[-1]["table"]))
    print(runs[-1]["wide"])


if __name__ == "__main__":
    sys.exit(main())
