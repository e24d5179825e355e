"""NetworkPolicies: who may reach each shard (opt-in, spec.networkPolicy or the operator default).

Shard 0 of a chain (behind the model's Service) accepts the clients and shard 0 of the
other chain (during a shadow or canary rollout the serving chain's shard 0 mirrors or
forwards to the candidate's); shard i accepts only the pods of shard i-1 of its chain,
which forward to it. Only the serving port is opened; egress is left alone (shards need
DNS and the next shard). Kubelet probes come from the node, which common network plugins
always admit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubeaccel_api.constants import GROUP, RUNTIME_PORT
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_operator.manifests.common import Chain, Manifest, selector_labels, shard_meta

if TYPE_CHECKING:
    from kubeaccel_operator.settings import Settings

# Pods in the model's namespace with this label may call it when spec.networkPolicy.clients
# names no peers.
CLIENT_LABEL = f"{GROUP}/client"


def network_policy_enabled(res: AcceleratedModel, cfg: Settings) -> bool:
    """spec.networkPolicy.enabled when set, else the operator's default."""
    enabled = res.spec.network_policy.enabled
    return cfg.network_policy if enabled is None else enabled


def client_peers(res: AcceleratedModel) -> list[dict[str, Any]]:
    """Who may call the model: spec.networkPolicy.clients, else client-labelled pods."""
    clients = res.spec.network_policy.clients
    if clients:
        return [dict(peer) for peer in clients]
    return [{"podSelector": {"matchLabels": {CLIENT_LABEL: "true"}}}]


def build_network_policy(res: AcceleratedModel, index: int, chain: Chain = Chain.A) -> Manifest:
    """NetworkPolicy of shard i of a chain: ingress from its callers only."""
    if index == 0:
        other = selector_labels(res, chain.other.component, 0)
        peers = [*client_peers(res), {"podSelector": {"matchLabels": other}}]
    else:
        previous = selector_labels(res, chain.component, index - 1)
        peers = [{"podSelector": {"matchLabels": previous}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": shard_meta(res, index, chain),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(res, chain.component, index)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": RUNTIME_PORT}]}],
        },
    }
