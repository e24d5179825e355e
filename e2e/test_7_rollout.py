"""Progressive delivery on a real cluster: shadow promotion, shadow rollback, canary
promotion, all under live load with zero client-visible errors; then autoscaling objects
accepted by the API server.

How the outcomes are made deterministic (the MLP example, served at FP32):
- the agreeing candidate changes only `optimization.graphOptimizationLevel` (extended ->
  basic): a new artifact whose outputs are bit-identical on this model (measured: max abs
  diff 0.0 on the 540 validation digits at every level);
- the perturbed candidate switches to dynamic INT8: it passes the offline accuracy gate
  (maxAccuracyDrop 0.01, minTop1Agreement 0.98, as the example ships), but its logits move
  by ~0.05 (measured on the validation digits), far beyond the rollout's own budget of
  maxAbsDiff 0.001, so the live comparison must roll it back;
- the canary candidate is judged on errors and latency only, which an FP32 model at
  another graph level passes.

Load comes from a Pod in the namespace that calls the model's Service continuously, a new
connection per request (as many clients do), and prints its running totals; the node has
2 CPUs, so every pod here requests little CPU (two chains run at once during a rollout).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubeaccel_e2e import (
    READY_TIMEOUT,
    ROOT,
    RUNTIME_IMAGE,
    SHORT_TIMEOUT,
    Kube,
    condition,
    get_model,
    sh,
    wait_model,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

NAME = "mlp-rollout"
RUNTIME_PORT = 8080
LOADER = "mlp-rollout-load"
# A rollout is a Job, a second chain starting, the kubelet propagating the routing
# ConfigMap (up to about a minute) and the comparison itself.
ROLLOUT_TIMEOUT = READY_TIMEOUT + 300
# The budget of the live comparison: far tighter than the offline gate of the example.
LIVE_BUDGET = {"maxAbsDiff": 0.001, "minTop1Agreement": 0.99}

LOAD_SCRIPT = r"""
import json, os, random, signal, sys, time, urllib.error, urllib.request
url = os.environ["URL"]
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                               "data": [random.random() for _ in range(784)]}]}).encode()
totals = {"ok": 0, "errors": 0, "statuses": {}, "versions": {}}
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
last = 0.0
while True:
    try:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            version = json.loads(r.read()).get("model_version", "?")
            totals["ok"] += 1
            totals["versions"][version] = totals["versions"].get(version, 0) + 1
    except urllib.error.HTTPError as e:
        totals["errors"] += 1
        totals["statuses"][str(e.code)] = totals["statuses"].get(str(e.code), 0) + 1
    except Exception as e:
        totals["errors"] += 1
        key = type(e).__name__
        totals["statuses"][key] = totals["statuses"].get(key, 0) + 1
    if time.monotonic() - last > 1.0:
        last = time.monotonic()
        print(json.dumps(totals), flush=True)
"""


def base_resource() -> dict[str, Any]:
    """The MLP example as committed (the optimizer image carries the model), shadow-rolled."""
    text = (ROOT / "examples" / "mlp.yaml").read_text()
    resource = next(d for d in yaml.safe_load_all(text) if d and d.get("kind"))
    resource = copy.deepcopy(resource)
    resource["metadata"] = {"name": NAME}
    spec = resource["spec"]
    spec["optimization"]["quantization"] = {"mode": "none"}
    spec["optimization"]["graphOptimizationLevel"] = "extended"
    spec["runtime"] = {
        "replicas": 1,
        "executionProvider": "cpu",
        "resources": {"cpu": "100m", "memory": "256Mi"},
    }
    spec["storage"] = {"pvc": {"size": "256Mi"}}
    spec["rollout"] = {
        "strategy": "shadow",
        "shadow": {"mirrorPercent": 100, "minRequests": 100, "maxDurationSeconds": 900},
        "budget": LIVE_BUDGET,
        "readyTimeoutSeconds": 600,
    }
    return resource


def patch(kube: Kube, spec: dict[str, Any]) -> int:
    """Merge-patch the spec; returns the new generation."""
    kube("patch", "am", NAME, "--type=merge", "-p", json.dumps({"spec": spec}))
    return int(get_model(kube, NAME)["metadata"]["generation"])


def verdict(kube: Kube, old_artifact: str, generation: int) -> dict[str, Any]:
    """Wait until a rollout begun at `generation` or later reaches its verdict.

    The generation matters: status.rollout keeps the previous rollout's record (say, a
    RolledBack candidate) until the next one starts, and that record names an artifact
    other than the one serving too.
    """

    def done(obj: dict[str, Any]) -> dict[str, Any] | None:
        rollout = (obj.get("status") or {}).get("rollout") or {}
        new = rollout.get("candidateArtifactId") not in (None, old_artifact)
        fresh = int(rollout.get("generation", -1)) >= generation
        finished = rollout.get("phase") in ("Promoted", "RolledBack")
        return obj if new and fresh and finished else None

    result: dict[str, Any] = wait_model(kube, NAME, "a rollout verdict", done, ROLLOUT_TIMEOUT)
    return result


def main_chain(kube: Kube) -> str:
    service = kube.get("service", NAME)
    return str(service["spec"]["selector"]["app.kubernetes.io/component"])


def deployments(kube: Kube) -> set[str]:
    return kube.names("deployments", f"kubeaccel.io/model={NAME}")


class Load:
    """The load Pod and its running totals."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def totals(self) -> dict[str, Any]:
        out = self.kube("logs", LOADER, "--tail=1", check=False).stdout.strip()
        if not out:
            return {"ok": 0, "errors": 0, "statuses": {}, "versions": {}}
        return dict(json.loads(out.splitlines()[-1]))

    def mark(self) -> dict[str, Any]:
        """Totals now (the next check compares against them)."""
        return self.totals()

    def clean_since(self, mark: dict[str, Any]) -> dict[str, Any]:
        """Assert requests went through since `mark` and none failed; returns the totals."""
        now = wait_until(
            "the load generator to report progress",
            lambda: (t := self.totals())["ok"] > mark["ok"] and t,
            SHORT_TIMEOUT,
        )
        assert now["errors"] == 0, f"client-visible errors under load: {now['statuses']}"
        return now


@pytest.fixture(scope="module")
def model(namespace: Kube) -> Iterator[dict[str, Any]]:
    resource = base_resource()
    namespace.apply(resource)
    yield resource
    namespace("delete", "am", NAME, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture(scope="module")
def load(namespace: Kube, model: dict[str, Any]) -> Iterator[Load]:
    wait_ready(namespace, NAME, int(get_model(namespace, NAME)["metadata"]["generation"]))
    url = f"http://{NAME}.{namespace.namespace}.svc:{RUNTIME_PORT}/v2/models/{NAME}/infer"
    security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": LOADER},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "load",
                    "image": RUNTIME_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", LOAD_SCRIPT],
                    "env": [{"name": "URL", "value": url}],
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "securityContext": security,
                }
            ],
        },
    }
    namespace.apply(pod)
    namespace.wait(f"pod/{LOADER}", "condition=Ready", SHORT_TIMEOUT)
    generator = Load(namespace)
    wait_until("the first answers", lambda: generator.totals()["ok"] > 0, SHORT_TIMEOUT)
    yield generator
    namespace("delete", "pod", LOADER, "--ignore-not-found", "--wait=false", check=False)


# --------------------------------------------------------------------------- tests


def test_a_candidate_that_agrees_on_live_traffic_is_promoted(namespace: Kube, load: Load) -> None:
    before = get_model(namespace, NAME)
    old = before["status"]["deployedArtifactId"]
    serving_chain = main_chain(namespace)
    mark = load.mark()
    generation = patch(namespace, {"optimization": {"graphOptimizationLevel": "basic"}})
    obj = verdict(namespace, old, generation)
    rollout = obj["status"]["rollout"]
    assert rollout["phase"] == "Promoted", rollout
    assert rollout["verdict"] == "WithinBudget"
    assert rollout["requestsCompared"] >= 100
    assert rollout["maxAbsDiff"] <= LIVE_BUDGET["maxAbsDiff"]
    assert obj["status"]["deployedArtifactId"] == rollout["candidateArtifactId"] != old
    assert main_chain(namespace) != serving_chain
    wait_until(
        "the previous chain removed", lambda: len(deployments(namespace)) == 1, SHORT_TIMEOUT
    )
    wait_ready(namespace, NAME, int(obj["metadata"]["generation"]))
    load.clean_since(mark)
    reasons = namespace(
        "get", "events", "--field-selector", f"involvedObject.name={NAME}", "-o", "json"
    ).stdout
    assert {"RolloutStarted", "CandidateReady", "Promoted"} <= {
        e["reason"] for e in json.loads(reasons)["items"]
    }


def test_a_candidate_perturbed_beyond_the_budget_is_rolled_back(
    namespace: Kube, load: Load
) -> None:
    before = get_model(namespace, NAME)
    serving = before["status"]["deployedArtifactId"]
    serving_chain = main_chain(namespace)
    mark = load.mark()
    generation = patch(namespace, {"optimization": {"quantization": {"mode": "dynamic-int8"}}})
    obj = verdict(namespace, serving, generation)
    status = obj["status"]
    rollout = status["rollout"]
    assert rollout["phase"] == "RolledBack", rollout
    assert rollout["verdict"] == "BudgetExceeded"
    assert rollout["maxAbsDiff"] > LIVE_BUDGET["maxAbsDiff"]
    assert status["deployedArtifactId"] == serving
    assert main_chain(namespace) == serving_chain  # the serving chain was never touched
    assert status["phase"] == "Degraded"
    degraded = condition(obj, "Degraded")
    assert degraded and degraded["status"] == "True"
    assert "maxAbsDiff" in degraded["message"] and "requests compared" in degraded["message"]
    wait_until("the candidate removed", lambda: len(deployments(namespace)) == 1, SHORT_TIMEOUT)
    load.clean_since(mark)


def test_a_canary_shifts_traffic_in_steps_and_is_promoted(namespace: Kube, load: Load) -> None:
    before = get_model(namespace, NAME)
    serving = before["status"]["deployedArtifactId"]
    mark = load.mark()
    generation = patch(
        namespace,
        {
            "optimization": {"quantization": {"mode": "none"}, "graphOptimizationLevel": "all"},
            "rollout": {
                "strategy": "canary",
                "shadow": None,
                "budget": None,
                "canary": {
                    "steps": [25, 50],
                    "stepIntervalSeconds": 20,
                    "minRequests": 20,
                    "maxLatencyRatio": 3,
                    "latencyToleranceMs": 50,
                    "maxDurationSeconds": 900,
                },
            },
        },
    )
    obj = verdict(namespace, serving, generation)
    rollout = obj["status"]["rollout"]
    assert rollout["phase"] == "Promoted", rollout
    assert rollout["verdict"] == "CanaryPassed"
    assert rollout["candidateRequests"] >= 40 and rollout["candidateErrors"] == 0
    assert obj["status"]["deployedArtifactId"] == rollout["candidateArtifactId"]
    totals = load.clean_since(mark)
    # Clients really were answered by the candidate during the canary.
    assert rollout["candidateArtifactId"] in totals["versions"]
    assert serving in totals["versions"]


def keda_installed() -> bool:
    """Whether this cluster serves KEDA's ScaledObject API."""
    out = sh(["kubectl", "api-resources", "--api-group=keda.sh", "-o", "name"], check=False)
    return "scaledobjects" in out.stdout


def test_autoscaling_creates_an_autoscaler_the_api_server_accepts(
    namespace: Kube, load: Load
) -> None:
    mark = load.mark()
    generation = patch(
        namespace, {"runtime": {"autoscaling": {"minReplicas": 1, "maxReplicas": 2}}}
    )
    obj = wait_ready(namespace, NAME, generation)
    shard = obj["status"]["shards"][0]["deployment"]
    kind, other = ("scaledobject", "hpa") if keda_installed() else ("hpa", "scaledobject")
    scaler = wait_until(
        f"the {kind} of {shard}",
        lambda: namespace.get(kind, shard, ignore_missing=True),
        SHORT_TIMEOUT,
    )
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": shard}
    assert scaler["spec"]["scaleTargetRef"] == target
    if kind == "hpa":
        assert scaler["apiVersion"] == "autoscaling/v2"
        assert (scaler["spec"]["minReplicas"], scaler["spec"]["maxReplicas"]) == (1, 2)
        # Without a metrics API (no metrics-server on the CI cluster) the HPA reports it
        # in its conditions and keeps the replica count; printed for the record.
        conditions = (scaler.get("status") or {}).get("conditions") or []
        print("HPA conditions:", json.dumps(conditions, indent=1))
    else:
        assert scaler["spec"]["triggers"][0]["type"] == "metrics-api"
        # KEDA creates and drives its own HPA; ours must not exist beside it.
        assert namespace.get(other, shard, ignore_missing=True) is None
    # The Deployment's replicas belong to the autoscaler now, not to the operator's apply.
    # kubectl leaves managedFields out of its output unless asked.
    shown = namespace("get", "deployment", shard, "-o", "json", "--show-managed-fields").stdout
    managed = json.loads(shown)["metadata"]["managedFields"]
    applied = [m for m in managed if m["manager"] == "kubeaccel-operator"]
    assert applied and all(
        "f:replicas" not in m.get("fieldsV1", {}).get("f:spec", {}) for m in applied
    )
    load.clean_since(mark)
