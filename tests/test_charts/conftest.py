"""Render the Helm chart with a real helm binary (scripts/get-helm.sh installs one)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeaccel"
RELEASE = "kubeaccel"
NAMESPACE = "kubeaccel-system"

Render = Callable[..., list[dict[str, Any]]]


def find_helm() -> str | None:
    """$HELM, then .tools/bin/helm (scripts/get-helm.sh), then helm on PATH."""
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "bin" / "helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> list[str]:
    """The helm command; skips here without one, fails in CI (CI=true) without one."""
    binary = find_helm()
    if binary is None:
        message = "helm binary not found: run scripts/get-helm.sh (installs .tools/bin/helm)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must run the chart tests", pytrace=False)
        pytest.skip(message)
    return [binary]


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment that keeps helm away from the user's config and any cluster."""
    scratch = tmp_path_factory.mktemp("helm-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(
        HELM_CACHE_HOME=str(scratch / "cache"),
        HELM_CONFIG_HOME=str(scratch / "config"),
        HELM_DATA_HOME=str(scratch / "data"),
        KUBECONFIG=os.devnull,
    )
    return env


def run_helm(
    helm: list[str], env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run helm; on an unexpected failure show its stderr."""
    proc = subprocess.run(
        [*helm, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}", pytrace=False)
    return proc


def values_args(tmp: Path, values: dict[str, Any] | None) -> list[str]:
    """-f <file> for a values override (a file keeps lists and types exact, unlike --set)."""
    if not values:
        return []
    path = tmp / f"values-{abs(hash(repr(values)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


@pytest.fixture(scope="session")
def run(
    helm: list[str], helm_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """run(*args, check=True) -> the finished helm process."""

    def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_helm(helm, helm_env, *args, check=check)

    return _run


@pytest.fixture(scope="session")
def render(
    helm: list[str], helm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Render:
    """render(values=None, chart=CHART) -> every object `helm template` produces."""
    tmp = tmp_path_factory.mktemp("values")

    def _render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
        proc = run_helm(
            helm,
            helm_env,
            "template",
            RELEASE,
            str(chart),
            "--namespace",
            NAMESPACE,
            *values_args(tmp, values),
        )
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    return _render


@pytest.fixture(scope="session")
def render_error(
    helm: list[str], helm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[dict[str, Any]], str]:
    """render_error(values) -> helm's error output; fails the test if rendering succeeds."""
    tmp = tmp_path_factory.mktemp("bad-values")

    def _render_error(values: dict[str, Any]) -> str:
        proc = run_helm(
            helm,
            helm_env,
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            *values_args(tmp, values),
            check=False,
        )
        assert proc.returncode != 0, f"helm accepted values {values!r}"
        return proc.stderr

    return _render_error


@pytest.fixture(scope="session")
def default_objects(render: Render) -> list[dict[str, Any]]:
    """The chart rendered with its default values."""
    return render()
