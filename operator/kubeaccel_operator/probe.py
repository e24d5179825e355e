"""Read what a running shard pod reports about itself over its HTTP port.

The execution provider a shard really got (onnxruntime falls back from TensorRT/CUDA to
the CPU where no GPU is usable) is known only inside the pod; the server publishes it as
the gauge `kubeaccel_execution_provider{provider="..."} 1` on /metrics. During a shadow or
canary rollout, shard 0 of the serving chain counts what it mirrors or routes and reports
it on `GET /v2/rollout`. The operator reads both from each ready pod's IP (so no Service
load-balancing hides a replica), which works only where the operator reaches the cluster
network; elsewhere it is not attempted (KUBEACCEL_POD_PROBES).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubeaccel_api.constants import RUNTIME_PORT
from kubeaccel_api.routing import REPORT_PATH, RoutingReport
from pydantic import ValidationError

from kubeaccel_operator.manifests.common import PORT_NAME

log = logging.getLogger(__name__)

# Reads one pod's provider from its IP; None when the pod does not answer.
ProviderReader = Callable[[str], "str | None"]
# Reads one pod's rollout counters from its base URL; None when it does not answer with them.
ReportReader = Callable[[str], "RoutingReport | None"]

PROBE_TIMEOUT = 2.0
_PROVIDER_GAUGE = re.compile(
    r'^kubeaccel_execution_provider\{[^}]*provider="(?P<provider>[^"]+)"[^}]*\}\s+1(?:\.0)?\s*$',
    re.MULTILINE,
)


def provider_from_metrics(text: str) -> str | None:
    """The provider whose gauge is 1 in Prometheus text exposition, or None."""
    match = _PROVIDER_GAUGE.search(text)
    return match["provider"] if match else None


def read_provider(
    pod_ip: str, port: int = RUNTIME_PORT, timeout: float = PROBE_TIMEOUT
) -> str | None:
    """GET http://<pod_ip>:<port>/metrics and read the provider gauge."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
            return provider_from_metrics(response.read(1 << 20).decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Whether a pod is running, not terminating, and its Ready condition is True."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def shard_providers(
    pods: Iterable[Mapping[str, Any]],
    shard_of: Callable[[Mapping[str, Any]], str | None],
    read: ProviderReader,
) -> dict[str, tuple[str, ...]]:
    """Shard name -> sorted distinct providers its ready pods report (unanswered pods skipped)."""
    found: dict[str, set[str]] = {}
    for pod in pods:
        shard, ip = shard_of(pod), (pod.get("status") or {}).get("podIP")
        if shard is None or not ip or not pod_ready(pod):
            continue
        provider = read(str(ip))
        if provider is not None:
            found.setdefault(shard, set()).add(provider)
    return {shard: tuple(sorted(providers)) for shard, providers in found.items()}


def pod_url(pod: Mapping[str, Any]) -> str | None:
    """Base URL of a ready pod's runtime port (as its spec names it), or None."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip or not pod_ready(pod):
        return None
    port = RUNTIME_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        for entry in container.get("ports") or []:
            if entry.get("name") == PORT_NAME and entry.get("containerPort"):
                port = int(entry["containerPort"])
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"http://{host}:{port}"


def read_report(url: str, timeout: float = PROBE_TIMEOUT) -> RoutingReport | None:
    """GET <url>/v2/rollout: one pod's rollout counters, or None (logged) without them."""
    try:
        with urllib.request.urlopen(url + REPORT_PATH, timeout=timeout) as response:
            return RoutingReport.model_validate(json.loads(response.read(1 << 22)))
    except (urllib.error.URLError, OSError, ValueError, ValidationError) as exc:
        log.info("no rollout report from %s: %s", url, exc)
        return None


def rollout_reports(
    pods: Iterable[Mapping[str, Any]], read: ReportReader
) -> tuple[RoutingReport, ...]:
    """The reports of every ready pod that answers with one."""
    urls = [u for u in (pod_url(p) for p in pods) if u is not None]
    return tuple(r for r in (read(u) for u in urls) if r is not None)
