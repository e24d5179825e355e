"""Helpers of the fault-injection and least-privilege suites (and bench/soak.py).

Clients run inside the cluster, as pods of the runtime image: a port-forward goes to one
pod, so it cannot show what a Service does when one of its pods disappears. Every wait
has a deadline.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubeaccel_e2e import (
    RELEASE,
    RELEASE_NAMESPACE,
    ROOT,
    RUNTIME_IMAGE,
    SHORT_TIMEOUT,
    Kube,
    model_pods_problem,
    sh,
    wait_until,
)

RUNTIME_PORT = 8080
OPERATOR_SELECTOR = f"app.kubernetes.io/component=operator,app.kubernetes.io/instance={RELEASE}"
CLIENT_LABEL = "kubeaccel.io/client"
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The cluster tool of this project (../shared/tools/cluster), when the suite runs on it.
CLUSTER_TOOL = Path(os.environ.get("KUBEACCEL_CLUSTER_TOOL", ROOT.parent / "shared/tools/cluster"))
CLUSTER_HOME = Path(os.environ.get("KUBEACCEL_CLUSTER_HOME", "/var/lib/kubeaccel-cluster"))

# Runs in a client pod: load through a URL under the client retry contract, print the
# figures as JSON. argv: url model seconds concurrency
LOAD_SCRIPT = """
import json, sys
import httpx
from kubeaccel_runtime.loadgen import LoadSpec, inputs_from_metadata, run
from kubeaccel_runtime.retry import CLIENT_POLICY
url, model, seconds, concurrency = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
meta = httpx.get(f"{url}/v2/models/{model}", timeout=30).json()
spec = LoadSpec(url=url, model=model, inputs=inputs_from_metadata(meta, 1), concurrency=concurrency,
                requests=None, duration_s=seconds, warmup=5, engine="httpx", retry=CLIENT_POLICY)
print("started", flush=True)
print(json.dumps(run(spec).as_dict()))
"""

# Runs in a client pod: the same request again and again for `seconds`; prints how many
# answers had each status and each distinct output (sha256 of the output bytes), and the
# most frequent error answers.
# argv: url model seconds
ANSWERS_SCRIPT = """
import hashlib, json, sys, time
from collections import Counter
import httpx
from kubeaccel_runtime.client import encode_request
from kubeaccel_runtime.loadgen import inputs_from_metadata
url, model, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
meta = httpx.get(f"{url}/v2/models/{model}", timeout=30).json()
body, headers = encode_request(inputs_from_metadata(meta, 1), binary=True, binary_outputs=True)
statuses, outputs, said = Counter(), Counter(), Counter()
print("started", flush=True)
deadline = time.monotonic() + seconds
with httpx.Client(base_url=url, timeout=10) as client:
    while time.monotonic() < deadline:
        try:
            r = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        except httpx.HTTPError:
            statuses["0"] += 1
            time.sleep(0.2)
            continue
        if r.status_code == 200:
            statuses["200"] += 1
            outputs[hashlib.sha256(r.content).hexdigest()] += 1
            continue
        ours = r.headers.get("content-type", "").startswith(("application/json", "application/octet"))
        # Not every refusal comes from a kubeaccel server: where a Service has no ready
        # endpoint, some networks answer for the unreachable address themselves (this
        # cluster's egress says 404, empty body, `server: keryx`). That is no answer: "0".
        statuses[str(r.status_code) if ours else "0"] += 1
        said[f"{r.status_code} {r.headers.get('server', '?')} {r.text[:160]}"] += 1
        time.sleep(0.2)
print(json.dumps({"statuses": statuses, "outputs": outputs, "said": dict(said.most_common(5))}))
"""

# Runs in a client pod: whether a TCP connection to each host:port succeeds. argv: targets
REACH_SCRIPT = """
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        out[target] = True
    except OSError:
        out[target] = False
print(json.dumps(out))
"""


def restricted_security() -> tuple[dict[str, Any], dict[str, Any]]:
    """Pod and container security contexts that pass the restricted Pod Security Standard."""
    pod = {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    container = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    return pod, container


def client_pod(
    name: str,
    script: str,
    args: Sequence[str],
    *,
    labels: Mapping[str, str] | None = None,
    volumes: Sequence[dict[str, Any]] = (),
    mounts: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A one-shot pod of the runtime image running `python -c script args...`."""
    pod_security, container_security = restricted_security()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/part-of": "kubeaccel-e2e", **(labels or {})},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": pod_security,
            "containers": [
                {
                    "name": "client",
                    "image": RUNTIME_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script, *args],
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "512Mi"},
                    },
                    "securityContext": container_security,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
        },
    }


def start_client(kube: Kube, prefix: str, script: str, args: Sequence[str], **kw: Any) -> str:
    """Create a client pod; returns its name (see `client_output`)."""
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    kube.apply(client_pod(name, script, args, **kw))
    return name


def client_output(kube: Kube, name: str, timeout: float) -> str:
    """Wait for a client pod to finish; its stdout (fails the test if it failed)."""

    def finished() -> str | None:
        phase = (kube.get("pod", name).get("status") or {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until(f"client pod {name} to finish", finished, timeout)
    logs = kube("logs", name, check=False).stdout
    kube("delete", "pod", name, "--wait=false", check=False)
    if phase != "Succeeded":
        raise AssertionError(f"client pod {name} failed:\n{logs[-3000:]}")
    return logs


def wait_client_started(kube: Kube, name: str, timeout: float = SHORT_TIMEOUT) -> None:
    """Wait until a client pod's script printed `started` (its requests are flowing)."""

    def started() -> bool:
        return "started" in kube("logs", name, check=False).stdout.split()

    wait_until(f"client pod {name} to start sending", started, timeout)


def run_client(
    kube: Kube, prefix: str, script: str, args: Sequence[str], timeout: float, **kw: Any
) -> Any:
    """Run a client pod to the end; its last stdout line as JSON."""
    name = start_client(kube, prefix, script, args, **kw)
    return json.loads(client_output(kube, name, timeout).strip().splitlines()[-1])


def sample_answers(kube: Kube, model: str, seconds: float, **kw: Any) -> dict[str, Any]:
    """Send the same request through the model's Service for `seconds` from a client pod:
    how many answers had each status and each distinct output."""
    args = [service_url(kube, model), model, str(seconds)]
    answers: dict[str, Any] = run_client(
        kube, "answers", ANSWERS_SCRIPT, args, SHORT_TIMEOUT + seconds, **kw
    )
    return answers


def service_url(kube: Kube, service: str) -> str:
    """In-cluster base URL of a Service of the namespace."""
    return f"http://{service}.{kube.namespace}.svc:{RUNTIME_PORT}"


# --------------------------------------------------------------------------- the operator


def operator() -> Kube:
    """kubectl bound to the operator's namespace."""
    return Kube(RELEASE_NAMESPACE)


def operator_pod() -> dict[str, Any]:
    """The running operator pod (exactly one)."""

    def one() -> dict[str, Any] | None:
        pods = [
            p
            for p in operator().get("pods", selector=OPERATOR_SELECTOR)["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]
        return pods[0] if len(pods) == 1 else None

    pod: dict[str, Any] = wait_until("exactly one operator pod", one, SHORT_TIMEOUT)
    return pod


def kill_operator() -> str:
    """Kill the operator pod at once (no grace: as a crash or node loss); its name."""
    name = str(operator_pod()["metadata"]["name"])
    operator()("delete", "pod", name, "--grace-period=0", "--force", "--wait=false")
    return name


def restart_operator() -> None:
    """Kill the operator pod (no grace) and wait for its replacement to be ready."""
    wait_operator_back(kill_operator())


def wait_operator_back(killed: str) -> None:
    """Wait until a new operator pod replaced `killed` and is ready."""

    def back() -> bool:
        pod = operator_pod()
        return pod["metadata"]["name"] != killed and is_ready(pod)

    wait_until("a new operator pod, ready", back, SHORT_TIMEOUT)


def restarts(pod: Mapping[str, Any]) -> int:
    """Container restarts of a pod."""
    return sum(int(c.get("restartCount", 0)) for c in pod["status"].get("containerStatuses", []))


# --------------------------------------------------------------------------- children


def children(kube: Kube, model: str, kind: str) -> list[dict[str, Any]]:
    """Objects of `kind` labelled as the model's."""
    items: list[dict[str, Any]] = kube.get(kind, selector=f"kubeaccel.io/model={model}")["items"]
    return items


def assert_nothing_lost_or_duplicated(kube: Kube, resource: Mapping[str, Any]) -> None:
    """Exactly one Job per artifact; exactly the shards' Deployments, each owned by the model."""
    name = resource["metadata"]["name"]
    model = kube.get("acceleratedmodel", name)
    uid = model["metadata"]["uid"]
    shards = int(resource["spec"].get("optimization", {}).get("partition", {}).get("shards", 1))
    jobs = children(kube, name, "jobs")
    artifacts = [j["metadata"]["labels"]["kubeaccel.io/artifact-id"] for j in jobs]
    assert len(artifacts) == len(set(artifacts)), f"more than one Job for an artifact: {artifacts}"
    deployments = children(kube, name, "deployments")
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        f"{name}-shard-{i}" for i in range(shards)
    ]
    for obj in [*jobs, *deployments, *children(kube, name, "services")]:
        owners = [
            r["uid"] for r in obj["metadata"].get("ownerReferences", []) if r.get("controller")
        ]
        assert owners == [uid], f"{obj['kind']} {obj['metadata']['name']} is not owned by {name}"
    services = sorted(s["metadata"]["name"] for s in children(kube, name, "services"))
    assert services == sorted([name, *(f"{name}-shard-{i}" for i in range(shards))])


def wait_unstuck(kube: Kube, model: str) -> None:
    """Wait until no pod of the model is stuck any more (after a fault is taken back).

    wait_ready gives up at once on a stuck pod; right after a fix the pods of the broken
    template (or pods left unschedulable by a drain) still look stuck for a moment.
    """
    wait_until(
        f"the pods of {model} to recover",
        lambda: model_pods_problem(kube, model) is None,
        SHORT_TIMEOUT,
    )


def shard_pods(kube: Kube, model: str, shard: int | None = None) -> list[dict[str, Any]]:
    """Live (not terminating) runtime pods of the model, optionally of one shard."""
    selector = f"kubeaccel.io/model={model},app.kubernetes.io/component=runtime"
    if shard is not None:
        selector += f",kubeaccel.io/shard={shard}"
    return [
        p
        for p in kube.get("pods", selector=selector)["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Whether a pod reports Ready=True."""
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions", [])
    )


def rss_bytes(kube: Kube, pod: str) -> int | None:
    """Resident memory of the pod's main process (/proc/1/status VmRSS), or None."""
    proc = kube("exec", pod, "--", "cat", "/proc/1/status", check=False, timeout=30)
    for line in proc.stdout.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


# --------------------------------------------------------------------------- the cluster tool


def cluster_tool_problem() -> str | None:
    """Why the API server cannot be stopped and started here, or None."""
    pid_file = CLUSTER_HOME / "run" / "kube-apiserver.pid"
    if not (CLUSTER_TOOL / "up").is_file():
        return f"the cluster tool is not at {CLUSTER_TOOL} (set KUBEACCEL_CLUSTER_TOOL)"
    if not os.access(pid_file, os.R_OK):
        return f"no readable {pid_file}: this cluster was not started by the cluster tool"
    server = sh(
        ["kubectl", "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"]
    ).stdout.strip()
    if server != "https://127.0.0.1:6443":
        return f"KUBECONFIG points at {server}, not the cluster tool's API server"
    if os.geteuid() != 0:
        return "the cluster tool's `up` (which restarts the API server) needs root"
    try:
        os.kill(apiserver_pid(), 0)  # exists, and this user may signal it
    except (OSError, ValueError) as exc:
        return f"cannot signal the API server process from {pid_file}: {exc}"
    return None


def apiserver_pid() -> int:
    """The kube-apiserver's pid, from the cluster tool's pid file."""
    return int((CLUSTER_HOME / "run" / "kube-apiserver.pid").read_text().strip())


def api_answers() -> bool:
    """Whether the API server answers /readyz."""
    proc = sh(
        ["kubectl", "get", "--raw", "/readyz", "--request-timeout=3s"], check=False, timeout=30
    )
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


# A SIGTERMed kube-apiserver stops answering at once but drains for about a minute more
# (measured here: 67 s) while it still holds its pid; the cluster tool's `up` sees it
# running then, starts nothing and times out when it exits. So the outage lasts until the
# process is gone; a server still draining after this long is killed.
APISERVER_EXIT_TIMEOUT = 120.0


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (its parent, init, may reap it late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_apiserver() -> None:
    """SIGTERM the kube-apiserver process only (etcd, kubelet, the pods keep running) and
    wait until it has exited."""
    pid = apiserver_pid()
    os.kill(pid, 15)
    wait_until("the API server to stop answering", lambda: not api_answers(), SHORT_TIMEOUT)
    deadline = time.monotonic() + APISERVER_EXIT_TIMEOUT
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if process_alive(pid):
        print(f"kube-apiserver {pid} still draining after {APISERVER_EXIT_TIMEOUT:.0f} s: SIGKILL")
        os.kill(pid, 9)
        wait_until("the API server process to exit", lambda: not process_alive(pid), 30)


def start_apiserver() -> None:
    """`up` starts what is not running (only the API server here) and waits for it."""
    sh([str(CLUSTER_TOOL / "up")], timeout=600)
    wait_until("the API server to answer again", api_answers, SHORT_TIMEOUT)


def elapsed(since: float) -> float:
    """Seconds since a time.monotonic() mark."""
    return time.monotonic() - since
