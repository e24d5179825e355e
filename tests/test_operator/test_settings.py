"""Operator settings read from the environment, and `kubeaccel-operator` refusing bad ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from kubeaccel_operator.settings import Settings, SettingsError, image_repository


def test_defaults_serve_the_whole_cluster_standalone_with_the_versioned_image() -> None:
    cfg = Settings.from_env({})
    assert cfg.namespaces == ()
    assert cfg.standalone
    assert cfg.runtime_image == "ghcr.io/kubeaccel/runtime:0.1.0"
    assert cfg.optimizer_image == "ghcr.io/kubeaccel/optimizer:0.1.0"
    assert cfg.gpu_runtime_image == "ghcr.io/kubeaccel/runtime:0.1.0-gpu"
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


@pytest.mark.parametrize(
    ("runtime", "gpu"),
    [
        ("reg.example/rt:1.2", "reg.example/rt:0.1.0-gpu"),
        ("reg.example:5000/team/rt:1.2", "reg.example:5000/team/rt:0.1.0-gpu"),
        ("reg.example:5000/rt@sha256:" + "a" * 64, "reg.example:5000/rt:0.1.0-gpu"),
        ("reg.example:5000/rt:1@sha256:" + "a" * 64, "reg.example:5000/rt:0.1.0-gpu"),
        ("kubeaccel/runtime", "kubeaccel/runtime:0.1.0-gpu"),
        ("runtime:latest", "runtime:0.1.0-gpu"),
    ],
)
def test_the_gpu_image_defaults_to_the_runtime_repository_with_a_gpu_tag(
    runtime: str, gpu: str
) -> None:
    assert Settings.from_env({"KUBEACCEL_RUNTIME_IMAGE": runtime}).gpu_runtime_image == gpu


def test_an_explicit_gpu_image_wins_and_an_empty_one_means_the_default() -> None:
    env = {"KUBEACCEL_RUNTIME_IMAGE": "reg/rt:1", "KUBEACCEL_GPU_RUNTIME_IMAGE": "reg/rt-cuda:7"}
    assert Settings.from_env(env).gpu_runtime_image == "reg/rt-cuda:7"
    env["KUBEACCEL_GPU_RUNTIME_IMAGE"] = ""
    assert Settings.from_env(env).gpu_runtime_image == "reg/rt:0.1.0-gpu"


def test_image_repository_drops_tag_and_digest_but_keeps_a_registry_port() -> None:
    assert image_repository("localhost:5000/a/b:1@sha256:" + "0" * 64) == "localhost:5000/a/b"
    assert image_repository("localhost:5000/a/b") == "localhost:5000/a/b"


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
