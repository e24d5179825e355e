"""Shadow rollouts end to end without a cluster: the real operator, the API emulator, and
real `kubeaccel serve` processes standing in for the shard-0 pods.

The test plays the controllers and the kubelet: it completes Jobs, makes Deployments
available, creates the Pod objects of the serving chain's shard 0 (pointing at local
server processes), and projects the routing ConfigMap into the servers' routing files,
mapping in-cluster Service URLs to the local candidate processes. The operator reads the
counters from the real servers exactly as it would from pods.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kmock_support import Api, EmulatorThread, OperatorProcess, finish_job, make_available, wait_for
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.validation import parse_resource
from kubeaccel_runtime.client import InferenceClient
from operator_samples import NAME, NS, deep_merge, summary

sys.path.insert(0, str(Path(__file__).parents[1] / "test_runtime" / "serve"))
from serve_fixtures import MLP_INPUTS, Proc, build_mlp, spec_for, write_artifact

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "source": {"uri": "pvc://models/mlp.onnx", "sha256": "5f" * 32},
    "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
    "runtime": {"replicas": 1},
    "rollout": {
        "strategy": "shadow",
        "shadow": {"mirrorPercent": 100, "minRequests": 20, "maxDurationSeconds": 600},
        "budget": {"minTop1Agreement": 0.99, "maxAbsDiff": 0.001},
    },
}
SECOND = deep_merge(SPEC, {"optimization": {"quantization": {"mode": "dynamic-int8"}}})
THIRD = deep_merge(SPEC, {"optimization": {"quantization": {"mode": "fp16"}}})
X = np.random.default_rng(3).uniform(-3, 3, size=(4, 4)).astype(np.float32)


def aid_of(spec: dict[str, Any]) -> str:
    doc = {"apiVersion": "kubeaccel.io/v1alpha1", "kind": "AcceleratedModel"}
    return artifact_id(parse_resource({**doc, "metadata": {"name": NAME}, "spec": spec}).spec)


def service_url(chain: str) -> str:
    prefix = f"{NAME}-shard-0" if chain == "a" else f"{NAME}-b-shard-0"
    return f"http://{prefix}.{NS}.svc:8080"


class Kubelet:
    """Projects the routing ConfigMap into each local server's routing file, like a kubelet
    updating a mounted ConfigMap, with in-cluster Service URLs mapped to local processes."""

    def __init__(self, api: Api, root: Path) -> None:
        self.api = api
        self.files = {chain: root / f"routing-{chain}.json" for chain in ("a", "b")}
        self.urls: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last = None
        while not self._stop.wait(0.1):
            cm = self.api.get("ConfigMap", NS, f"{NAME}-routing")
            text = (cm or {}).get("data", {}).get("routing.json", "")
            for cluster_url, local in self.urls.items():
                text = text.replace(cluster_url, local)
            if text == last:
                continue
            last = text
            for path in self.files.values():
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.replace(path)


class Env:
    def __init__(self, emu: EmulatorThread, tmp: Path) -> None:
        self.api = Api(emu.url)
        config = tmp / "kubeconfig"
        config.write_text(emu.kubeconfig())
        self.operator = OperatorProcess(
            str(config),
            str(tmp / "operator.log"),
            namespaces=NS,
            rollout_poll_seconds="0.3",
            pod_probes="on",  # pods are local processes here
        )
        self.tmp = tmp
        self.procs: list[Proc] = []

    def status(self) -> dict[str, Any]:
        obj = self.api.get("AcceleratedModel", NS, NAME)
        assert obj is not None
        return dict(obj.get("status") or {})

    def phase(self) -> str | None:
        """status.rollout.phase (None before the operator wrote one)."""
        return (self.status().get("rollout") or {}).get("phase")

    def condition(self, ctype: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c["type"] == ctype), {})

    def serve(self, artifact: Path, chain: str, kubelet: Kubelet) -> Proc:
        proc = Proc(artifact, "--routing-file", str(kubelet.files[chain]), "--chain", chain)
        self.procs.append(proc)
        proc.wait_for("/v2/health/ready", 200)
        return proc

    def pod(self, chain: str, proc: Proc) -> None:
        """The Pod object of shard 0 of `chain`, Ready, at the local process's port."""
        component = "runtime" if chain == "a" else "runtime-b"
        name = f"{NAME}-{chain}-shard-0-{uuid.uuid4().hex[:5]}"
        self.api.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": NS,
                    "labels": {
                        "app.kubernetes.io/name": "kubeaccel",
                        "app.kubernetes.io/instance": NAME,
                        "app.kubernetes.io/component": component,
                        "kubeaccel.io/shard": "0",
                    },
                },
                "spec": {
                    "containers": [
                        {
                            "name": "runtime",
                            "image": "x",
                            "ports": [{"name": "http", "containerPort": proc.port}],
                        }
                    ]
                },
            }
        )
        self.api.patch(
            "Pod",
            NS,
            name,
            {
                "status": {
                    "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
            sub="status",
        )

    def deploy(self, spec: dict[str, Any]) -> None:
        """Create the resource and play the controllers until chain a serves it."""
        self.api.create(
            {
                "apiVersion": "kubeaccel.io/v1alpha1",
                "kind": "AcceleratedModel",
                "metadata": {"name": NAME, "namespace": NS},
                "spec": spec,
            }
        )
        finish_job(self.api, NS, self.one_job(aid_of(spec)), summary(aid_of(spec)))
        wait_for(lambda: self.api.get("Deployment", NS, f"{NAME}-shard-0"), "chain a")
        make_available(self.api, NS, f"{NAME}-shard-0")
        wait_for(lambda: self.status().get("phase") == "Ready", "Ready")

    def roll_out(
        self, spec: dict[str, Any], chain: str, artifact: Path, kubelet: Kubelet, phase: str
    ) -> Proc:
        """Change the spec and play the controllers until the candidate in `chain` gets
        traffic (`phase`); returns the candidate's server process."""
        deployment = f"{NAME}-shard-0" if chain == "a" else f"{NAME}-b-shard-0"
        self.api.patch("AcceleratedModel", NS, NAME, {"spec": spec})
        finish_job(self.api, NS, self.one_job(aid_of(spec)), summary(aid_of(spec)))
        wait_for(lambda: self.api.get("Deployment", NS, deployment), "the candidate's shards")
        wait_for(lambda: self.phase() == "Starting", "the rollout starting")
        candidate = self.serve(artifact, chain, kubelet)
        kubelet.urls[service_url(chain)] = candidate.url
        make_available(self.api, NS, deployment)
        wait_for(lambda: self.phase() == phase, phase)
        return candidate

    def one_job(self, artifact: str) -> str:
        def found() -> str | None:
            for job in self.api.list("Job", NS):
                if job["metadata"]["labels"]["kubeaccel.io/artifact-id"] == artifact:
                    return str(job["metadata"]["name"])
            return None

        name: str = wait_for(found, f"the Job of {artifact}")
        return name

    def traffic_until(self, proc: Proc, done: Any, what: str) -> tuple[int, set[str]]:
        """Send requests to `proc` until `done()`; every one must succeed. Returns (count,
        model versions that answered)."""
        sent = 0
        versions: set[str] = set()
        with InferenceClient(proc.url) as client:

            def step() -> Any:
                nonlocal sent
                for _ in range(5):
                    versions.add(str(client.infer("mlp", {"x": X}).model_version))
                    sent += 1
                return done()

            wait_for(step, what, timeout=90, interval=0.05)
        return sent, versions


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with EmulatorThread() as emu:
        e = Env(emu, tmp_path)
        try:
            yield e
        finally:
            for proc in e.procs:
                proc.stop()
            code = e.operator.stop()
            if code not in (0, -15):
                print(e.operator.log())


def _artifact(root: Path, seed: int, tag: int) -> Path:
    spec = spec_for(MLP_INPUTS)
    spec["optimization"]["validation"] = {"seed": tag}
    return write_artifact(root / f"a{tag}", build_mlp(seed=seed), spec, name="mlp")


def test_shadow_rollouts_promote_an_agreeing_candidate_and_roll_back_a_perturbed_one(
    env: Env,
) -> None:
    root = env.tmp / "artifacts"
    serving_art, agreeing_art, perturbed_art = (
        _artifact(root, 0, 0),
        _artifact(root, 0, 1),  # same weights, another artifact
        _artifact(root, 7, 2),  # other weights: outputs far apart
    )
    env.operator.start()
    env.deploy(SPEC)

    with Kubelet(env.api, env.tmp) as kubelet:
        serving = env.serve(serving_art, "a", kubelet)
        env.pod("a", serving)

        # ---- rollout 1: an agreeing candidate is promoted
        candidate = env.roll_out(SECOND, "b", agreeing_art, kubelet, "Shadowing")

        sent, versions = env.traffic_until(
            serving,
            lambda: env.phase() != "Shadowing",
            "the verdict on the agreeing candidate",
        )
        rollout = env.status()["rollout"]
        assert rollout["phase"] == "Promoted", rollout
        assert rollout["verdict"] == "WithinBudget"
        assert 20 <= rollout["requestsCompared"] <= sent and rollout["top1Agreement"] == 1.0
        assert versions == {serving_art.name}  # every answer came from the serving chain
        main = wait_for(
            lambda: (
                (s := env.api.get("Service", NS, NAME))
                and s["spec"]["selector"]["app.kubernetes.io/component"] == "runtime-b"
                and s
            ),
            "the main Service on chain b",
        )
        assert main["spec"]["selector"]["kubeaccel.io/shard"] == "0"
        wait_for(lambda: env.api.get("Deployment", NS, f"{NAME}-shard-0") is None, "chain a gone")
        assert env.status()["deployedArtifactId"] == aid_of(SECOND)
        events = [e["reason"] for e in env.api.list("Event", NS)]
        assert {"RolloutStarted", "CandidateReady", "Promoted"} <= set(events)

        # ---- rollout 2: chain b serves; a perturbed candidate in chain a is rolled back
        make_available(env.api, NS, f"{NAME}-b-shard-0")
        env.pod("b", candidate)
        env.roll_out(THIRD, "a", perturbed_art, kubelet, "Shadowing")

        sent, versions = env.traffic_until(
            candidate,
            lambda: env.phase() != "Shadowing",
            "the verdict on the perturbed candidate",
        )
        rollout = env.status()["rollout"]
        assert rollout["phase"] == "RolledBack", rollout
        assert rollout["verdict"] == "BudgetExceeded"
        assert 0 < rollout["requestsCompared"] <= sent
        assert versions == {agreeing_art.name}  # still chain b, without one failed request
        degraded = env.condition("Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "BudgetExceeded"
        assert "maxAbsDiff" in degraded["message"] and "requests compared" in degraded["message"]
        assert env.status()["phase"] == "Degraded"
        wait_for(lambda: env.api.get("Deployment", NS, f"{NAME}-shard-0") is None, "candidate gone")
        service = env.api.get("Service", NS, NAME)
        assert service is not None
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == "runtime-b"
        assert env.status()["deployedArtifactId"] == aid_of(SECOND)
        routing = json.loads(
            env.api.get("ConfigMap", NS, f"{NAME}-routing")["data"]["routing.json"]
        )
        assert routing["mode"] == "off"


def test_an_operator_restart_mid_comparison_keeps_the_rollout_going(env: Env) -> None:
    root = env.tmp / "artifacts"
    serving_art, agreeing_art = _artifact(root, 0, 0), _artifact(root, 0, 1)
    env.operator.start()
    env.deploy(SPEC)
    with Kubelet(env.api, env.tmp) as kubelet:
        serving = env.serve(serving_art, "a", kubelet)
        env.pod("a", serving)
        env.roll_out(SECOND, "b", agreeing_art, kubelet, "Shadowing")
        started = env.status()["rollout"]["analysisStartedAt"]

        assert env.operator.stop() in (0, -15)
        with InferenceClient(serving.url) as client:  # traffic while the operator is down

            def compared() -> bool:
                client.infer("mlp", {"x": X})
                report = serving.get("/v2/rollout")
                return report is not None and report.json()["shadow"]["compared"] >= 25

            wait_for(compared, "requests compared while the operator is down")
        env.operator.start()
        # A restart re-lists everything before the next analysis poll: slower on a loaded CI box.
        wait_for(lambda: env.phase() == "Promoted", "promoted after restart", timeout=120)
        rollout = env.status()["rollout"]
        assert rollout["analysisStartedAt"] == started  # the same rollout, not a new one
        assert rollout["requestsCompared"] >= 20


def test_a_canary_answers_part_of_the_traffic_and_is_promoted(env: Env) -> None:
    root = env.tmp / "artifacts"
    serving_art, candidate_art = _artifact(root, 0, 0), _artifact(root, 0, 1)
    canary_spec = deep_merge(
        SPEC,
        {
            "rollout": {
                "strategy": "canary",
                "shadow": None,
                "budget": None,
                "canary": {
                    "steps": [50],
                    "stepIntervalSeconds": 5,
                    "minRequests": 10,
                    "maxLatencyRatio": 100,
                    "latencyToleranceMs": 1000,
                },
            }
        },
    )
    second = deep_merge(canary_spec, {"optimization": {"quantization": {"mode": "dynamic-int8"}}})
    env.operator.start()
    env.deploy(canary_spec)
    with Kubelet(env.api, env.tmp) as kubelet:
        serving = env.serve(serving_art, "a", kubelet)
        env.pod("a", serving)
        env.roll_out(second, "b", candidate_art, kubelet, "Canary")
        sent, versions = env.traffic_until(
            serving, lambda: env.phase() != "Canary", "the canary's verdict"
        )
        rollout = env.status()["rollout"]
        assert rollout["phase"] == "Promoted" and rollout["verdict"] == "CanaryPassed", rollout
        assert rollout["candidateRequests"] >= 10 and rollout["candidateErrors"] == 0
        # Clients got answers from both chains during the canary, and no error.
        assert versions == {serving_art.name, candidate_art.name}
        assert sent >= rollout["candidateRequests"] + rollout["servingRequests"]
