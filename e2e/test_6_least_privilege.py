"""Least privilege, checked live: the operator's rights, the shards' tokens, who reaches a shard.

- The operator's ServiceAccount can do exactly what kubeaccel_operator.kube
  REQUIRED_PERMISSIONS lists (`kubectl auth can-i --list`), nothing more, nothing less.
- Shard pods carry no ServiceAccount token.
- With spec.networkPolicy on, only clients reach shard 0 and only shard 0 reaches shard 1.
  That last part needs a network plugin that enforces NetworkPolicy; where the cluster's
  does not (the project's cluster tool uses the plain bridge plugin), the test says so and
  checks only that the policies exist as built and were accepted by the API server.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubeaccel_e2e import RELEASE, SHORT_TIMEOUT, Kube, get_model, wait_ready
from kubeaccel_faults import (
    CLIENT_LABEL,
    REACH_SCRIPT,
    RUNTIME_PORT,
    SA_TOKEN_DIR,
    operator,
    run_client,
    sample_answers,
    shard_pods,
)
from kubeaccel_operator.kube import REQUIRED_PERMISSIONS

pytestmark = pytest.mark.e2e

NAME = "cnn-fenced"
# Granted to every authenticated user by the default roles (system:basic-user): a
# ServiceAccount cannot be without them, so they are not the chart's doing.
EVERYONES = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
}
ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")

Grants = dict[tuple[str, str], set[str]]


@pytest.fixture(scope="module")
def fenced(namespace: Kube, example_cnn: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example with its NetworkPolicies on, optimized quickly (no pruning, no INT8)."""
    res = copy.deepcopy(example_cnn)
    res["metadata"] = {"name": NAME}
    opt = res["spec"]["optimization"]
    opt.pop("pruning", None)
    opt["quantization"] = {"mode": "none"}
    res["spec"]["runtime"]["resources"] = {**res["spec"]["runtime"]["resources"], "cpu": "200m"}
    res["spec"]["networkPolicy"] = {"enabled": True}
    namespace.apply(res)
    wait_ready(namespace, NAME, int(get_model(namespace, NAME)["metadata"]["generation"]))
    yield res
    namespace("delete", "am", NAME, "--ignore-not-found", "--wait=false", check=False)


def split_resource(name: str) -> tuple[str, str]:
    """`deployments.apps` -> (apps, deployments); a subresource stays on the resource.

    kubectl prints a subresource as `resource/sub.group` or `resource.group/sub`.
    """
    resource, _, group = name.partition(".")
    if "/" in group:
        group, sub = group.split("/", 1)
        resource += "/" + sub
    return group, resource


def can_i_list(user: str, namespace: str) -> Grants:
    """What `kubectl auth can-i --list` says `user` may do in `namespace`, by resource."""
    out = Kube(namespace)("auth", "can-i", "--list", f"--as={user}").stdout
    grants: Grants = {}
    for line in out.splitlines()[1:]:
        match = ROW.match(line)
        if not match or not match[1]:
            continue  # non-resource URLs (/api, /version...): every user's discovery
        group, resource = split_resource(match[1])
        grants.setdefault((group, resource), set()).update(match[4].split())
    return grants


def required() -> Grants:
    grants: Grants = {}
    for group, resource, verbs in REQUIRED_PERMISSIONS:
        grants.setdefault((group, resource), set()).update(verbs)
    return grants


def test_the_operator_can_do_exactly_what_required_permissions_lists(namespace: Kube) -> None:
    deployment = operator().get("deployment", RELEASE)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    user = f"system:serviceaccount:{operator().namespace}:{account}"
    granted = {k: v for k, v in can_i_list(user, namespace.namespace).items() if k not in EVERYONES}
    assert granted == required(), (
        f"more: { {k: v - required().get(k, set()) for k, v in granted.items() if v - required().get(k, set())} }, "
        f"less: { {k: v - granted.get(k, set()) for k, v in required().items() if v - granted.get(k, set())} }"
    )


def test_shard_pods_mount_no_service_account_token(namespace: Kube, fenced: dict[str, Any]) -> None:
    pods = shard_pods(namespace, NAME)
    assert len(pods) == 2
    for pod in pods:
        spec = pod["spec"]
        assert spec.get("automountServiceAccountToken") is False
        projected = [v for v in spec.get("volumes", []) if "projected" in v]
        assert not any(
            "serviceAccountToken" in source
            for v in projected
            for source in v["projected"].get("sources", [])
        )
        for container in spec["containers"]:
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert SA_TOKEN_DIR not in mounts
        check = namespace(
            "exec",
            pod["metadata"]["name"],
            "--",
            "python",
            "-c",
            f"import os; print(os.path.exists({SA_TOKEN_DIR!r}))",
        )
        assert check.stdout.strip() == "False"


def test_each_shard_has_a_network_policy_admitting_only_its_callers(
    namespace: Kube, fenced: dict[str, Any]
) -> None:
    shard0 = namespace.get("networkpolicy", f"{NAME}-shard-0")
    shard1 = namespace.get("networkpolicy", f"{NAME}-shard-1")
    for shard, policy in ((0, shard0), (1, shard1)):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"]["matchLabels"]["kubeaccel.io/shard"] == str(shard)
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": RUNTIME_PORT}]
    clients, other_chain = shard0["spec"]["ingress"][0]["from"]
    assert clients == {"podSelector": {"matchLabels": {CLIENT_LABEL: "true"}}}
    # The other chain's shard 0: a shadow or canary rollout mirrors or forwards to it.
    assert other_chain["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "runtime-b"
    (previous,) = shard1["spec"]["ingress"][0]["from"]
    assert previous["podSelector"]["matchLabels"]["kubeaccel.io/shard"] == "0"
    # Clients get answers: they reach shard 0, and shard 0 reaches shard 1.
    answers = sample_answers(namespace, NAME, 3, labels={CLIENT_LABEL: "true"})
    assert set(answers["statuses"]) == {"200"}, answers


def test_only_clients_reach_shard_0_and_only_shard_0_reaches_shard_1(
    namespace: Kube, fenced: dict[str, Any]
) -> None:
    targets = [
        f"{NAME}-shard-0.{namespace.namespace}.svc:{RUNTIME_PORT}",
        f"{NAME}-shard-1.{namespace.namespace}.svc:{RUNTIME_PORT}",
    ]
    stranger = run_client(namespace, "stranger", REACH_SCRIPT, targets, SHORT_TIMEOUT)
    if stranger[targets[0]]:
        pytest.skip(
            "this cluster's network plugin does not enforce NetworkPolicy (a pod without the "
            f"{CLIENT_LABEL} label reached shard 0); the policies exist and were accepted"
        )
    assert stranger == {targets[0]: False, targets[1]: False}
    client = run_client(
        namespace, "client", REACH_SCRIPT, targets, SHORT_TIMEOUT, labels={CLIENT_LABEL: "true"}
    )
    assert client == {targets[0]: True, targets[1]: False}
