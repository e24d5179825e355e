"""Last: uninstalling the chart removes the operator, its RBAC and (crds.keep=false) the CRD."""

from __future__ import annotations

import pytest
from kubeaccel_e2e import RELEASE, RELEASE_NAMESPACE, SHORT_TIMEOUT, sh, wait_until

pytestmark = pytest.mark.e2e

CRD = "acceleratedmodels.kubeaccel.io"


def test_helm_uninstall_removes_the_operator_rbac_and_crd(
    helm: str, release: dict[str, str]
) -> None:
    sh(
        [helm, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "5m"],
        timeout=400,
    )

    def gone(*args: str) -> bool:
        return not sh(["kubectl", "get", *args, "--ignore-not-found", "-o", "name"]).stdout.strip()

    wait_until(
        "the operator Deployment to go",
        lambda: gone("-n", RELEASE_NAMESPACE, "deployment", RELEASE),
        SHORT_TIMEOUT,
    )
    wait_until(
        "the ClusterRole and binding to go",
        lambda: gone("clusterrole,clusterrolebinding", RELEASE),
        SHORT_TIMEOUT,
    )
    wait_until("the CRD to go", lambda: gone("crd", CRD), SHORT_TIMEOUT)
