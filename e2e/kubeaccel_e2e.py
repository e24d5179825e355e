"""Helpers of the e2e suite: the cluster check, kubectl, waits with deadlines, HTTP.

The suite waits on conditions with deadlines (`kubectl wait`, polling under a deadline),
never on fixed sleeps, and a wait gives up early, with the reason, when the cluster says
it cannot succeed (a pod that cannot be scheduled, pulled or started): a broken build or
cluster fails in minutes, not at the end of every deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubeaccel_runtime.client import oip_datatype

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kubeaccel"
VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "operator/kubeaccel_api/version.py").read_text()
)[1]  # type: ignore[index]
OPERATOR_IMAGE = os.environ.get("KUBEACCEL_E2E_OPERATOR_IMAGE", f"kubeaccel/operator:{VERSION}")
RUNTIME_IMAGE = os.environ.get("KUBEACCEL_E2E_RUNTIME_IMAGE", f"kubeaccel/runtime:{VERSION}")
OPTIMIZER_IMAGE = os.environ.get("KUBEACCEL_E2E_OPTIMIZER_IMAGE", f"kubeaccel/optimizer:{VERSION}")
GPU_RUNTIME_IMAGE = os.environ.get(
    "KUBEACCEL_E2E_GPU_RUNTIME_IMAGE", f"kubeaccel/runtime:{VERSION}-gpu"
)
RELEASE = "kubeaccel-e2e"
RELEASE_NAMESPACE = "kubeaccel-e2e-system"
# Apply -> Ready of the example takes about a minute on a 2-CPU node (docs/kubernetes.md);
# the deadline leaves room for a loaded machine. Waits also stop early on a stuck pod.
READY_TIMEOUT = float(os.environ.get("KUBEACCEL_E2E_TIMEOUT", "360"))
SHORT_TIMEOUT = 180.0
# A pod Pending as unschedulable for this long will not be scheduled by waiting longer.
UNSCHEDULABLE_GRACE = float(os.environ.get("KUBEACCEL_E2E_UNSCHEDULABLE_GRACE", "60"))
# Waiting reasons a container does not leave by itself.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


# --------------------------------------------------------------------------- the skip


def find_helm() -> str | None:
    """$HELM, then .tools/bin/helm (scripts/get-helm.sh), then helm on PATH."""
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "bin" / "helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("helm")


def kubeconfig_paths() -> list[Path]:
    """The kubeconfig files kubectl would read."""
    if os.environ.get("KUBECONFIG"):
        return [Path(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def cluster_problem() -> str | None:
    """Why the e2e suite cannot run here, or None when a cluster is reachable."""
    hint = "`make e2e` creates a kind cluster (needs docker and kind"
    missing = [tool for tool in ("docker", "kind") if shutil.which(tool) is None]
    hint += f"; missing here: {', '.join(missing)})" if missing else ")"
    if shutil.which("kubectl") is None:
        return f"kubectl is not installed; {hint}"
    # Without a kubeconfig kubectl falls back to localhost:8080, which is never a cluster
    # we mean to test (and may be some other local server).
    if not any(p.is_file() for p in kubeconfig_paths()):
        return (
            f"no cluster: no kubeconfig at {os.pathsep.join(map(str, kubeconfig_paths()))}; {hint}"
        )
    proc = subprocess.run(
        ["kubectl", "cluster-info", "--request-timeout=5s"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no answer"])[-1][:200]
        return f"no cluster reachable (kubectl cluster-info: {first}); {hint}"
    if find_helm() is None:
        return "a cluster is reachable but helm is missing: run scripts/get-helm.sh"
    return None


# --------------------------------------------------------------------------- kubectl


class CommandError(AssertionError):
    """A kubectl/helm command failed; carries its stderr."""

    def __init__(self, args: list[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{' '.join(args)} -> exit {proc.returncode}\n{proc.stderr.strip()}")
        self.stderr = proc.stderr


def sh(
    args: list[str], *, input: str | None = None, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command; raise CommandError on failure when check."""
    proc = subprocess.run(
        args, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(args, proc)
    return proc


@dataclass(frozen=True)
class Kube:
    """kubectl bound to one namespace."""

    namespace: str

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return sh(
            ["kubectl", "-n", self.namespace, *args], input=input, timeout=timeout, check=check
        )

    def get(
        self,
        kind: str,
        name: str | None = None,
        *,
        selector: str | None = None,
        ignore_missing: bool = False,
    ) -> Any:
        """An object (or a List) as JSON."""
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if selector:
            args += ["-l", selector]
        if ignore_missing:
            args.append("--ignore-not-found")
        out = self(*args).stdout
        return json.loads(out) if out.strip() else None

    def names(self, kind: str, selector: str) -> set[str]:
        """Names of the objects of a kind that match a label selector."""
        return {o["metadata"]["name"] for o in self.get(kind, selector=selector)["items"]}

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Server-side apply with strict field validation."""
        args = [
            "apply",
            "--server-side",
            "--field-manager=kubeaccel-e2e",
            "--validate=strict",
            "-f",
            "-",
        ]
        if dry_run:
            args.append("--dry-run=server")
        return self(*args, input=json.dumps(obj), check=check)

    def wait(self, target: str, condition: str, timeout: float) -> None:
        """`kubectl wait --for=<condition>` with a deadline."""
        self(
            "wait", target, f"--for={condition}", f"--timeout={int(timeout)}s", timeout=timeout + 30
        )


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    interval: float = 2.0,
    *,
    stuck: Callable[[], str | None] | None = None,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """Poll `check` until it returns something truthy.

    Fails with `what` at the deadline, or as soon as `stuck` names a reason the wait cannot
    succeed; `diagnose` adds what the cluster shows (events, logs) to either failure.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        reason = stuck() if stuck else None
        if reason:
            extra = f"\n{diagnose()}" if diagnose else ""
            pytest.fail(f"gave up waiting for {what}: {reason}{extra}", pytrace=False)
        time.sleep(interval)  # a poll interval under a deadline, not a fixed wait
    extra = f"\n{diagnose()}" if diagnose else ""
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){extra}", pytrace=False
    )


# --------------------------------------------------------------------------- diagnosis


def _age_seconds(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds()


def pod_problem(pod: dict[str, Any], grace: float = UNSCHEDULABLE_GRACE) -> str | None:
    """Why a pod will not become ready by waiting, or None (pure; reads the pod's status)."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
            and _age_seconds(cond.get("lastTransitionTime")) >= grace
        ):
            return f"pod {name} unschedulable for {grace:.0f}s+: {cond.get('message', '')}"
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for cs in containers:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message", "")
            detail = " ".join(p for p in (waiting.get("message", ""), last.strip()) if p)
            return f"pod {name} container {cs.get('name')}: {waiting['reason']}: {detail}"[:2000]
    return None


def model_pods_problem(kube: Kube, model: str) -> str | None:
    """The first pod of a model (Job or shard) that is stuck, with why; None if none is."""
    pods = kube.get("pods", selector=f"kubeaccel.io/model={model}")["items"]
    for pod in pods:
        problem = pod_problem(pod)
        if problem:
            return problem
    return None


def operator_log_tail(lines: int = 40) -> str:
    """The last lines of the operator's log (the chart's Deployment)."""
    proc = sh(
        [
            "kubectl",
            "-n",
            RELEASE_NAMESPACE,
            "logs",
            f"deployment/{RELEASE}",
            f"--tail={lines}",
            "--all-containers",
        ],
        check=False,
        timeout=60,
    )
    return (proc.stdout or proc.stderr).strip()


def diagnosis(namespace: str | None) -> str:
    """What a person would look at first when something did not become ready."""
    parts: list[str] = []

    def add(title: str, args: list[str]) -> None:
        proc = sh(args, check=False, timeout=60)
        parts.append(f"--- {title}\n{(proc.stdout or proc.stderr).strip()}")

    if namespace:
        add(
            f"objects in {namespace}",
            ["kubectl", "-n", namespace, "get", "am,jobs,deployments,pods", "-o", "wide"],
        )
        add(
            f"events in {namespace} (last 25)",
            [
                "kubectl",
                "-n",
                namespace,
                "get",
                "events",
                "--sort-by=.lastTimestamp",
                "-o",
                "custom-columns=LAST:.lastTimestamp,TYPE:.type,REASON:.reason,"
                "OBJECT:.involvedObject.name,MESSAGE:.message",
            ],
        )
        parts[-1] = "\n".join(parts[-1].splitlines()[-26:])
    add("node resources", ["kubectl", "describe", "nodes"])
    text = parts[-1]
    start, end = text.find("Allocated resources:"), text.find("Events:")
    parts[-1] = "--- node resources\n" + (text[start:end] if start >= 0 else text[-1500:]).strip()
    parts.append(f"--- operator log (last 40 lines)\n{operator_log_tail()}")
    return "\n".join(parts)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """A status condition by type."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


# --------------------------------------------------------------------------- models


def get_model(kube: Kube, name: str) -> dict[str, Any]:
    """The AcceleratedModel as the API server has it now."""
    obj = kube.get("acceleratedmodel", name)
    assert isinstance(obj, dict)
    return obj


def wait_model(
    kube: Kube,
    name: str,
    what: str,
    check: Callable[[dict[str, Any]], Any],
    timeout: float = READY_TIMEOUT,
    *,
    fail_on_failed: bool = True,
) -> Any:
    """Poll the model until `check(model)` is truthy.

    Gives up at once, with the cluster's diagnosis, when the model turns Failed (unless
    that is what the caller waits for) or one of its pods is stuck.
    """

    def stuck() -> str | None:
        status = get_model(kube, name).get("status") or {}
        if fail_on_failed and status.get("phase") == "Failed":
            return f"{name} failed: {status.get('message')} {status.get('conditions')}"
        return model_pods_problem(kube, name)

    return wait_until(
        f"{name}: {what}",
        lambda: check(get_model(kube, name)),
        timeout,
        stuck=stuck,
        diagnose=lambda: diagnosis(kube.namespace),
    )


def wait_ready(
    kube: Kube, name: str, generation: int, timeout: float = READY_TIMEOUT
) -> dict[str, Any]:
    """Wait until the operator acted on `generation` and reports Ready=True."""

    def ready(obj: dict[str, Any]) -> dict[str, Any] | None:
        status = obj.get("status") or {}
        cond = condition(obj, "Ready")
        fresh = status.get("observedGeneration") == generation
        return obj if fresh and cond and cond["status"] == "True" else None

    result = wait_model(kube, name, f"Ready=True at generation {generation}", ready, timeout)
    assert isinstance(result, dict)
    return result


def ready_pods(kube: Kube, deployment: str) -> set[str]:
    """Names of the running, ready pods of a Deployment (by its selector)."""
    dep = kube.get("deployment", deployment)
    selector = ",".join(f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"].items())
    pods = kube.get("pods", selector=selector)["items"]
    return {
        p["metadata"]["name"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    }


def jobs_of(kube: Kube, name: str) -> set[str]:
    """Names of the optimization Jobs of a model."""
    return kube.names("jobs", f"kubeaccel.io/model={name}")


# --------------------------------------------------------------------------- HTTP


@contextmanager
def port_forward(kube: Kube, target: str, port: int) -> Iterator[str]:
    """`kubectl port-forward <target> :<port>`; yields the local base URL."""
    proc = subprocess.Popen(
        [
            "kubectl",
            "-n",
            kube.namespace,
            "port-forward",
            target,
            f":{port}",
            "--address",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:41234 -> 8080"
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"port-forward {target} failed: {line}{err}")
        yield f"http://127.0.0.1:{match[1]}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def infer_body(resource: dict[str, Any], batch: int = 1) -> dict[str, Any]:
    """An OIP v2 request that satisfies the resource's inputs contract (zeros)."""
    inputs = []
    for spec in resource["spec"]["inputs"]:
        shape = [batch if d == -1 else d for d in spec["shape"]]
        count = 1
        for d in shape:
            count *= d
        datatype = oip_datatype(np.dtype(spec["dtype"]))
        value: Any = False if datatype == "BOOL" else 0
        inputs.append(
            {"name": spec["name"], "shape": shape, "datatype": datatype, "data": [value] * count}
        )
    return {"inputs": inputs}


def split_image(ref: str) -> tuple[str, str]:
    """repository, tag of an image reference."""
    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:
        return ref, "latest"
    return repo, tag
