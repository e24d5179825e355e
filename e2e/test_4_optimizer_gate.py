"""The optimizer's issue-11 behaviour on a real cluster: the accuracy gate's intervals and its
"cannot resolve" warning reach status and Events through the Job's termination message, and
the embedding example (int64 token ids, two outputs) optimizes, deploys and answers.

The example models are committed; the optimizer image carries the same files (like
example_cnn).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubeaccel_e2e import (
    ROOT,
    Kube,
    condition,
    http,
    infer_body,
    port_forward,
    wait_model,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

RUNTIME_PORT = 8080


def example(name: str) -> dict[str, Any]:
    """examples/<name>.yaml as committed."""
    text = (ROOT / "examples" / f"{name}.yaml").read_text()
    resource = next(d for d in yaml.safe_load_all(text) if d and d.get("kind"))
    assert isinstance(resource, dict)
    return resource


def small(resource: dict[str, Any], name: str) -> dict[str, Any]:
    """One replica of one shard with a small CPU request: fits the 2-CPU node beside others."""
    out = copy.deepcopy(resource)
    out["metadata"] = {"name": name}
    spec = out["spec"]
    spec["optimization"].setdefault("partition", {})["shards"] = 1
    spec["runtime"]["replicas"] = 1
    spec["runtime"].setdefault("resources", {}).update({"cpu": "250m", "memory": "512Mi"})
    return out


def warning_reasons(kube: Kube, name: str) -> list[str]:
    """Reasons of the Warning Events posted on the resource."""
    events = kube.get("events")["items"]
    return [
        e["reason"]
        for e in events
        if e["involvedObject"]["name"] == name and e.get("type") == "Warning"
    ]


def test_a_budget_too_few_samples_cannot_resolve_warns_in_status_and_events(
    namespace: Kube,
) -> None:
    name = "gate-mlp"
    resource = small(example("mlp"), name)
    optimization = resource["spec"]["optimization"]
    optimization["quantization"] = {"mode": "auto"}
    optimization["objective"] = "size"
    optimization["validation"]["samples"] = 40  # far fewer than a 1-point budget needs
    namespace.apply(resource)
    obj = wait_model(
        namespace,
        name,
        "Optimized=True",
        lambda o: o if (condition(o, "Optimized") or {}).get("status") == "True" else None,
    )
    summary = obj["status"]["optimization"]
    assert summary["objective"] == "size"
    gate = summary["gate"]
    assert gate["samples"] == 40 and gate["resolved"] is False
    drop = gate["accuracyDrop"]
    assert drop["low"] <= drop["value"] <= drop["high"]
    assert "cannot resolve maxAccuracyDrop 0.01" in gate["message"]
    optimized = condition(obj, "Optimized")
    assert optimized is not None
    assert "NOT resolved by the validation data" in optimized["message"]
    wait_until(
        "the AccuracyUnresolved Warning Event",
        lambda: "AccuracyUnresolved" in warning_reasons(namespace, name),
        120,
    )
    namespace("delete", "am", name, "--wait=true", "--timeout=120s", timeout=150)


def test_the_embedding_example_serves_token_ids_with_both_outputs(namespace: Kube) -> None:
    name = "embedder"
    resource = small(example("embedder"), name)
    namespace.apply(resource)
    obj = wait_ready(namespace, name, 1)
    summary = obj["status"]["optimization"]
    assert summary["sizeRatio"] < 0.3  # the embedding table is quantized
    assert summary["gate"]["samples"] == 3000 and summary["gate"]["resolved"] is True
    with port_forward(namespace, f"service/{name}", RUNTIME_PORT) as base:
        status, answer = http("POST", f"{base}/v2/models/{name}/infer", infer_body(resource, 2))
        assert status == 200, answer
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert outputs["logits"]["shape"] == [2, 4]
        assert outputs["embedding"]["shape"] == [2, 64]
        bad = infer_body(resource, 1)
        bad["inputs"][0]["data"] = [9000] * 32  # outside the vocabulary
        status, answer = http("POST", f"{base}/v2/models/{name}/infer", bad)
        assert status == 400 and "8191" in answer["error"]
    namespace("delete", "am", name, "--wait=true", "--timeout=120s", timeout=150)
