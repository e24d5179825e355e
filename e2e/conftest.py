"""e2e on a real cluster (any cluster from KUBECONFIG; `make e2e` makes one with kind).

Without a reachable cluster, or without the tools the suite drives (kubectl, helm), every
test is skipped with ONE reason, so CI on a machine without Docker stays green.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# pytest runs with --import-mode=importlib, which puts no test folder on sys.path: the test
# modules import their helpers from kubeaccel_e2e.py next to this file.
sys.path.insert(0, str(Path(__file__).parent))

from kubeaccel_e2e import (
    CHART,
    OPERATOR_IMAGE,
    OPTIMIZER_IMAGE,
    RELEASE,
    RELEASE_NAMESPACE,
    ROOT,
    RUNTIME_IMAGE,
    CommandError,
    Kube,
    cluster_problem,
    diagnosis,
    find_helm,
    sh,
    split_image,
)

_PROBLEM: list[str | None] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every e2e test with the same single reason when no cluster can be used."""
    e2e_items = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e_items:
        return
    if not _PROBLEM:
        _PROBLEM.append(cluster_problem())
    if _PROBLEM[0] is not None:
        marker = pytest.mark.skip(reason=f"e2e: {_PROBLEM[0]}")
        for item in e2e_items:
            item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach what the cluster shows (objects, events, operator log) to a failed e2e test."""
    report = yield
    if report.failed and call.when == "call" and item.get_closest_marker("e2e"):
        kube = getattr(item, "funcargs", {}).get("namespace")
        namespace = kube.namespace if isinstance(kube, Kube) else None
        try:
            report.sections.append(("cluster diagnosis", diagnosis(namespace)))
        except (OSError, CommandError) as exc:  # the cluster itself may be what broke
            report.sections.append(("cluster diagnosis", f"unavailable: {exc}"))
    return report


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary (its absence already skipped the suite)."""
    binary = find_helm()
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def release(helm: str) -> Iterator[dict[str, str]]:
    """The chart installed once for the session; uninstalled (and checked) at the end."""
    op_repo, op_tag = split_image(OPERATOR_IMAGE)
    rt_repo, rt_tag = split_image(RUNTIME_IMAGE)
    opt_repo, opt_tag = split_image(OPTIMIZER_IMAGE)
    sh(["kubectl", "create", "namespace", RELEASE_NAMESPACE], check=False)
    # The operator itself must pass the restricted Pod Security Standard.
    sh(
        [
            "kubectl",
            "label",
            "--overwrite",
            "namespace",
            RELEASE_NAMESPACE,
            "pod-security.kubernetes.io/enforce=restricted",
        ]
    )
    install = sh(
        [
            helm,
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            "--namespace",
            RELEASE_NAMESPACE,
            "--set",
            f"image.repository={op_repo}",
            "--set",
            f"image.tag={op_tag}",
            "--set",
            f"runtimeImage.repository={rt_repo}",
            "--set",
            f"runtimeImage.tag={rt_tag}",
            "--set",
            f"optimizerImage.repository={opt_repo}",
            "--set",
            f"optimizerImage.tag={opt_tag}",
            "--set",
            "crds.keep=false",
            "--set",
            "verbose=true",
            "--wait",
            "--timeout",
            "150s",
        ],
        timeout=200,
        check=False,
    )
    if install.returncode != 0:
        pytest.fail(
            f"helm install failed: {install.stderr.strip()}\n{diagnosis(RELEASE_NAMESPACE)}",
            pytrace=False,
        )
    info = {"release": RELEASE, "namespace": RELEASE_NAMESPACE}
    yield info
    sh(
        [helm, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "5m"],
        timeout=400,
        check=False,
    )
    sh(["kubectl", "delete", "namespace", RELEASE_NAMESPACE, "--wait=false"], check=False)


@pytest.fixture(scope="module")
def namespace(release: dict[str, str]) -> Iterator[Kube]:
    """A fresh namespace enforcing the restricted Pod Security Standard."""
    name = f"kubeaccel-e2e-{uuid.uuid4().hex[:6]}"
    sh(["kubectl", "create", "namespace", name])
    sh(["kubectl", "label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted"])
    yield Kube(name)
    sh(["kubectl", "delete", "namespace", name, "--wait=false"], check=False)


@pytest.fixture(scope="session")
def example_cnn() -> dict[str, Any]:
    """The example CNN resource, as committed: the optimizer image carries the same model."""
    text = (ROOT / "examples" / "cnn.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    resource = next(d for d in docs if d.get("kind") == "AcceleratedModel")
    assert isinstance(resource, dict)
    return resource
