"""Every pod the operator creates meets the restricted Pod Security Standard, field by field.

The checks follow https://kubernetes.io/docs/concepts/security/pod-security-standards/
(baseline + restricted, latest). A real API server's admission enforces the same rules;
this test catches a regression without a cluster. readOnlyRootFilesystem is not part of
the standard but is a project rule (DESIGN.md), so it is checked too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubeaccel_operator.manifests.deployment import build_deployment
from kubeaccel_operator.manifests.job import build_job
from kubeaccel_operator.settings import Settings
from operator_samples import GPU2, aid, model

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every way `pod` (a pod spec) breaks the restricted standard; empty when it complies."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    # ---- baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"{field} must be unset or false")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess must be false")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            out.append(f"volume {volume['name']}: hostPath is forbidden")
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {volume['name']}: type {sorted(kinds)} is not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    for ctx_name, ctx in [("pod", psc)] + [
        (c["name"], c.get("securityContext") or {}) for c in containers(pod)
    ]:
        se = ctx.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{ctx_name}: seLinuxOptions not allowed")
        if (ctx.get("appArmorProfile") or {}).get("type") not in (
            None,
            "RuntimeDefault",
            "Localhost",
        ):
            out.append(f"{ctx_name}: appArmorProfile must be RuntimeDefault or Localhost")
        if ctx.get("runAsUser") == 0:
            out.append(f"{ctx_name}: runAsUser must not be 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{ctx_name}: seccompProfile must be RuntimeDefault or Localhost")
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged must be false")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount must be Default")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{name}: hostPort must be unset or 0")
        caps = sc.get("capabilities") or {}
        if not set(caps.get("add") or []) <= BASELINE_CAPABILITIES:
            out.append(f"{name}: capabilities.add beyond the baseline set")
        # ---- restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if not (
            sc.get("runAsNonRoot") is True
            or (psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)
        ):
            out.append(f"{name}: runAsNonRoot must be true (pod or container)")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be set to RuntimeDefault or Localhost")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities.drop must include ALL")
        if not set(caps.get("add") or []) <= {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities.add may only hold NET_BIND_SERVICE")
        # ---- project rule
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem must be true")
    return out


VARIANTS = {
    "cpu": {},
    "one-gpu": {"runtime": {"resources": {"gpus": 1}}},
    "two-shards-two-gpus": GPU2,
    "placement": {
        "runtime": {
            "resources": {"gpus": 1},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "nodeSelector": {"pool": "gpu"},
            "runtimeClassName": "nvidia",
        },
        "optimization": {"quantization": {"mode": "auto"}},
    },
    "existing-claim-and-pvc-data": {
        "storage": {"pvc": {"claimName": "shared"}},
        "optimization": {"validation": {"uri": "pvc://data/val.npz"}},
    },
}


def pod_specs(spec: dict[str, Any], cfg: Settings) -> Iterator[tuple[str, dict[str, Any]]]:
    res = model(spec)
    artifact = aid(spec)
    yield "job", build_job(res, artifact, cfg)["spec"]["template"]["spec"]
    for shard in range(res.spec.optimization.partition.shards):
        yield (
            f"shard-{shard}",
            build_deployment(res, shard, artifact, cfg)["spec"]["template"]["spec"],
        )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_job_and_deployment_pod_meets_the_restricted_standard(
    variant: str, cfg: Settings
) -> None:
    for what, pod in pod_specs(VARIANTS[variant], cfg):
        assert restricted_violations(pod) == [], what


def test_the_checker_reports_each_kind_of_violation() -> None:
    pod = {
        "hostNetwork": True,
        "securityContext": {"runAsUser": 0},
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [
            {
                "name": "c",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
            }
        ],
    }
    problems = restricted_violations(pod)
    for expected in (
        "hostNetwork must be unset or false",
        "volume h: hostPath is forbidden",
        "pod: runAsUser must not be 0",
        "c: privileged must be false",
        "c: hostPort must be unset or 0",
        "c: capabilities.add beyond the baseline set",
        "c: allowPrivilegeEscalation must be false",
        "c: runAsNonRoot must be true (pod or container)",
        "c: seccompProfile must be set to RuntimeDefault or Localhost",
        "c: capabilities.drop must include ALL",
        "c: readOnlyRootFilesystem must be true",
    ):
        assert expected in problems
