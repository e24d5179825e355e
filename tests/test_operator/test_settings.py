"""Operator settings read from the environment, and `kubeaccel-operator` refusing bad ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from kubeaccel_operator.settings import Settings, SettingsError


def test_defaults_serve_the_whole_cluster_standalone_with_the_versioned_image() -> None:
    cfg = Settings.from_env({})
    assert cfg.namespaces == ()
    assert cfg.standalone
    assert cfg.runtime_image == "ghcr.io/kubeaccel/runtime:0.1.0"
    assert cfg.optimizer_image == "ghcr.io/kubeaccel/optimizer:0.1.0"
    assert cfg.gpu_resource_name == "nvidia.com/gpu"
    assert cfg.liveness_endpoint == "http://0.0.0.0:8080/healthz"


def test_every_setting_is_read_from_its_kubeaccel_variable() -> None:
    cfg = Settings.from_env(
        {
            "KUBEACCEL_NAMESPACES": " team-b, team-a ,,team-b",
            "KUBEACCEL_RUNTIME_IMAGE": "reg/rt:1",
            "KUBEACCEL_OPTIMIZER_IMAGE": "reg/opt:1",
            "KUBEACCEL_GPU_RESOURCE_NAME": "amd.com/gpu",
            "KUBEACCEL_WORKERS": "3",
            "KUBEACCEL_JOB_DEADLINE_SECONDS": "600",
            "KUBEACCEL_HEALTH_PORT": "9090",
            "KUBEACCEL_PEERING_NAME": "kubeaccel",
            "UNRELATED": "x",
        }
    )
    assert cfg.namespaces == ("team-a", "team-b")
    assert (cfg.runtime_image, cfg.optimizer_image) == ("reg/rt:1", "reg/opt:1")
    assert cfg.gpu_resource_name == "amd.com/gpu"
    assert cfg.workers == 3 and cfg.job_deadline_seconds == 600
    assert cfg.liveness_endpoint == "http://0.0.0.0:9090/healthz"
    assert not cfg.standalone and cfg.peering_name == "kubeaccel"
    assert Settings.from_env({"KUBEACCEL_PEERING_NAME": ""}).standalone


def test_settings_are_frozen() -> None:
    cfg = Settings()
    with pytest.raises(ValueError, match="frozen"):
        cfg.workers = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KUBEACCEL_WORKERS": "many"}, "KUBEACCEL_WORKERS"),
        ({"KUBEACCEL_WORKERS": "0"}, "KUBEACCEL_WORKERS"),
        ({"KUBEACCEL_GPU_RESOURCE_NAME": "gpu"}, "KUBEACCEL_GPU_RESOURCE_NAME"),
        ({"KUBEACCEL_OPTIMIZER_MEMORY": "lots"}, "KUBEACCEL_OPTIMIZER_MEMORY"),
        ({"KUBEACCEL_IMAGE_PULL_POLICY": "Sometimes"}, "KUBEACCEL_IMAGE_PULL_POLICY"),
        ({"KUBEACCEL_HEALTH_PORT": "70000"}, "KUBEACCEL_HEALTH_PORT"),
    ],
)
def test_a_bad_setting_is_reported_with_its_variable_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_the_operator_refuses_to_start_with_a_bad_setting() -> None:
    env = {**os.environ, "KUBEACCEL_WORKERS": "-1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kubeaccel_operator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "KUBEACCEL_WORKERS" in proc.stderr
    assert "Traceback" not in proc.stderr
