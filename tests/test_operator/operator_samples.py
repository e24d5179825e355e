"""Sample AcceleratedModel bodies and observed children for the operator tests."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.v1alpha1 import AcceleratedModel
from kubeaccel_api.validation import parse_resource
from kubeaccel_operator.pods import Termination
from kubeaccel_operator.reconcile import CHILD_KINDS, Observed

NAME = "mnist"
NS = "ml"
UID = "0b7c3f4e-1d2a-4c5b-9e8f-7a6b5c4d3e2f"
SHA = "5f" * 32
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2025, 1, 2, 3, 9, 5, tzinfo=UTC)
OWNER = {
    "apiVersion": "kubeaccel.io/v1alpha1",
    "kind": "AcceleratedModel",
    "name": NAME,
    "uid": UID,
    "controller": True,
    "blockOwnerDeletion": True,
}


def deep_merge(base: Any, override: Any) -> Any:
    """`override` merged into a copy of `base` (dicts recursively; None deletes)."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = deep_merge(out.get(key), value)
    return out


def body(
    spec: Mapping[str, Any] | None = None,
    *,
    name: str = NAME,
    generation: int = 1,
    uid: str = UID,
) -> dict[str, Any]:
    """A raw AcceleratedModel as the API server stores it; `spec` is merged into a CPU default."""
    base_spec = {
        "source": {"uri": "pvc://models/mnist.onnx", "sha256": SHA},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
    }
    return {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": generation},
        "spec": deep_merge(base_spec, dict(spec or {})),
    }


def model(
    spec: Mapping[str, Any] | None = None,
    *,
    status: Any = None,
    generation: int = 1,
    uid: str = UID,
) -> AcceleratedModel:
    """The parsed resource, optionally with a status (model or wire dict)."""
    res = parse_resource(body(spec, generation=generation, uid=uid))
    if status is None:
        return res
    if isinstance(status, dict):
        from kubeaccel_api.v1alpha1 import AcceleratedModelStatus

        status = AcceleratedModelStatus.model_validate(status)
    return res.model_copy(update={"status": status})


def aid(spec: Mapping[str, Any] | None = None) -> str:
    """The artifact id a spec asks for."""
    return artifact_id(model(spec).spec)


GPU2 = {
    "optimization": {"partition": {"shards": 2}, "quantization": {"mode": "fp16"}},
    "runtime": {"replicas": 2, "resources": {"gpus": 2, "cpu": "2", "memory": "8Gi"}},
}

SUMMARY = {
    "artifactId": "",  # filled per artifact
    "bytesBefore": 4_000_000,
    "bytesAfter": 2_000_000,
    "sizeRatio": 0.5,
    "latencyBeforeMs": 2.0,
    "latencyAfterMs": 1.0,
    "speedup": 2.0,
    "maxAbsDiff": 0.001,
    "top1Agreement": 1.0,
    "chosen": "fp16",
    "executionProvider": "CUDAExecutionProvider",
}


def summary(artifact: str) -> str:
    """The compact JSON the optimizer writes to its termination message."""
    return json.dumps({**SUMMARY, "artifactId": artifact}, separators=(",", ":"))


def observed(
    *objects: Mapping[str, Any],
    messages: Mapping[str, str] | None = None,
    terminations: Mapping[str, Termination] | None = None,
    claim_present: bool | None = None,
    providers: Mapping[str, tuple[str, ...]] | None = None,
) -> Observed:
    """Observed children and pods from objects (copied, so tests can mutate freely).

    `messages` are Job termination messages (exit code and reason unknown);
    `terminations` give the whole of how a Job's last pod ended.
    """
    by_kind: dict[str, dict[str, Any]] = {kind: {} for kind in CHILD_KINDS}
    pods: dict[str, Any] = {}
    for obj in objects:
        target = pods if obj["kind"] == "Pod" else by_kind[obj["kind"]]
        target[obj["metadata"]["name"]] = copy.deepcopy(dict(obj))
    ended = {job: Termination(message=text) for job, text in (messages or {}).items()}
    ended.update(terminations or {})
    return Observed(
        objects=by_kind,
        terminations=ended,
        claim_present=claim_present,
        providers=dict(providers or {}),
        pods=pods,
    )


def live(obj: Mapping[str, Any], generation: int = 1) -> dict[str, Any]:
    """A built manifest as the API server returns it (generation set)."""
    out = copy.deepcopy(dict(obj))
    out["metadata"]["generation"] = generation
    return out


def job_complete(job: Mapping[str, Any]) -> dict[str, Any]:
    """A Job the Job controller marked Complete."""
    out = live(job)
    out["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    return out


def job_failed(job: Mapping[str, Any], reason: str = "BackoffLimitExceeded") -> dict[str, Any]:
    """A Job the Job controller marked Failed."""
    out = live(job)
    out["status"] = {
        "failed": 3,
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "message": "Job has reached the specified backoff limit",
            }
        ],
    }
    return out


def job_running(job: Mapping[str, Any]) -> dict[str, Any]:
    """A Job with one active pod."""
    out = live(job)
    out["status"] = {"active": 1}
    return out


def deployment_available(
    deployment: Mapping[str, Any], available: int | None = None
) -> dict[str, Any]:
    """A Deployment the controller rolled out, with `available` replicas (default: all)."""
    out = live(deployment)
    replicas = out["spec"]["replicas"]
    ready = replicas if available is None else available
    out["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }
    return out


def shard_pod(
    deployment: Mapping[str, Any],
    suffix: str = "abcde",
    *,
    ready: bool = False,
    waiting: tuple[str, str] | None = None,
    terminated: Mapping[str, Any] | None = None,
    last_terminated: Mapping[str, Any] | None = None,
    unschedulable: str | None = None,
) -> dict[str, Any]:
    """A pod of `deployment`'s template as the kubelet reports it.

    `waiting` is (reason, message); `terminated`/`last_terminated` are the kubelet's
    terminated records of the runtime container now and before its last restart.
    """
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    state: dict[str, Any] = {"running": {"startedAt": "2025-01-02T03:04:05Z"}}
    if waiting is not None:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    if terminated is not None:
        state = {"terminated": dict(terminated)}
    status: dict[str, Any] = {"phase": "Running" if ready else "Pending", "conditions": []}
    if unschedulable is not None:
        status["conditions"].append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    else:
        status["containerStatuses"] = [
            {
                "name": container["name"],
                "image": container["image"],
                "ready": ready,
                "restartCount": 1 if last_terminated else 0,
                "state": state,
                "lastState": {"terminated": dict(last_terminated)} if last_terminated else {},
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{deployment['metadata']['name']}-7d9f8-{suffix}",
            "namespace": deployment["metadata"]["namespace"],
            "labels": dict(template["metadata"]["labels"]),
            "annotations": dict(template["metadata"]["annotations"]),
        },
        "spec": copy.deepcopy(template["spec"]),
        "status": status,
    }
