"""`kubeaccel serve` as a real process: readiness, failed loads, SIGTERM draining, JSON logs."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_runtime.cli import main as kubeaccel
from kubeaccel_runtime.client import InferenceClient, OipError
from kubeaccel_runtime.serve.cli import SPEC_ENV, resolve_spec, settings_for
from serve_fixtures import MLP_INPUTS, Proc, build_mlp, spec_for, write_artifact

X = np.ones((1, 4), dtype=np.float32)


def copy_of(artifact: Path, tmp_path: Path) -> Path:
    """A private copy of an artifact directory, for a test that damages it."""
    import shutil

    return Path(shutil.copytree(artifact, tmp_path / artifact.name))


@pytest.fixture(scope="module")
def slow_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Batching with a long window: one lone request waits ~1 s in the queue."""
    spec = spec_for(MLP_INPUTS, batching={"enabled": True, "maxBatchSize": 32, "maxDelayMs": 1000})
    return write_artifact(tmp_path_factory.mktemp("slow"), build_mlp(), spec, name="mlp")


@pytest.mark.slow
def test_sigterm_flips_readiness_drains_in_flight_requests_and_exits_zero(
    slow_artifact: Path, proc_factory: type[Proc]
) -> None:
    p = proc_factory(slow_artifact, "--drain-seconds", "2")
    p.wait_for("/v2/health/ready", 200)
    result: dict[str, object] = {}

    def call() -> None:
        with InferenceClient(p.url, timeout=20) as cli:
            result["y"] = cli.infer("mlp", {"x": X}).outputs["y"]

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the request is now waiting in the batch window
    p.proc.send_signal(signal.SIGTERM)
    r = p.wait_for("/v2/health/ready", 503, timeout=5)
    assert r.json()["error"] == "server is shutting down"
    assert p.get("/v2/health/live") is not None  # still serving during the drain
    caller.join(20)
    assert "y" in result, "".join(p.lines)
    assert np.asarray(result["y"]).shape == (1, 3)
    assert p.proc.wait(20) == 0
    assert any(entry["msg"] == "signal received; draining" for entry in p.logs())


@pytest.mark.slow
def test_a_tampered_artifact_keeps_the_server_not_ready_and_exits_one(
    mlp_artifact: Path, tmp_path: Path, proc_factory: type[Proc]
) -> None:
    bad = copy_of(mlp_artifact, tmp_path)
    shard = bad / "shard-0.onnx"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    last_words = tmp_path / "termination-log"
    started = time.monotonic()
    p = proc_factory(
        bad, "--fail-exit-seconds", "1.5", env={"KUBEACCEL_TERMINATION_LOG": str(last_words)}
    )
    p.wait_for("/v2/health/live", 200)
    r = p.wait_for("/v2/health/ready", 503)
    assert "sha256 mismatch" in r.json()["error"]
    with pytest.raises(OipError) as err:
        InferenceClient(p.url).infer("mlp", {"x": X})
    assert err.value.status == 503
    assert p.proc.wait(30) == 1
    assert time.monotonic() - started >= 1.5
    errors = [e for e in p.logs() if e["level"] == "error"]
    assert errors and "sha256 mismatch" in str(errors[0]["msg"])
    # What Kubernetes shows as the container's last message, and the operator reads.
    reason = json.loads(last_words.read_text())
    assert reason["reason"] == "ArtifactInvalid"
    assert reason["error"].startswith("shard 0: ") and "sha256 mismatch" in reason["error"]


@pytest.mark.slow
def test_an_artifact_changed_while_serving_withdraws_the_model_and_exits_one(
    mlp_artifact: Path, tmp_path: Path, proc_factory: type[Proc]
) -> None:
    served = copy_of(mlp_artifact, tmp_path)
    last_words = tmp_path / "termination-log"
    p = proc_factory(
        served,
        "--verify-interval",
        "0.2",
        "--fail-exit-seconds",
        "1",
        env={"KUBEACCEL_TERMINATION_LOG": str(last_words)},
    )
    p.wait_for("/v2/health/ready", 200)
    with InferenceClient(p.url) as cli:
        before = cli.infer("mlp", {"x": X}).outputs["y"]
    shard = served / "shard-0.onnx"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    shard.write_bytes(bytes(data))
    answers: list[np.ndarray] = []
    refused = 0
    with InferenceClient(p.url, timeout=5) as cli:
        while p.proc.poll() is None:
            try:
                answers.append(cli.infer("mlp", {"x": X}).outputs["y"])
            except OipError as exc:
                assert exc.status == 503 and "sha256 mismatch" in str(exc)
                refused += 1
            except httpx.TransportError:
                break  # the server has stopped listening
    assert p.proc.wait(30) == 1
    assert refused > 0, "the changed artifact was never noticed"
    # Every answer came from the verified model in memory: nothing else was ever answered.
    for y in answers:
        np.testing.assert_array_equal(y, before)
    reason = json.loads(last_words.read_text())
    assert reason["reason"] == "ArtifactInvalid" and "sha256 mismatch" in reason["error"]


@pytest.mark.slow
def test_the_served_model_answers_over_a_real_socket(
    mlp_artifact: Path, proc_factory: type[Proc]
) -> None:
    p = proc_factory(mlp_artifact)
    p.wait_for("/v2/models/mlp/ready", 200)
    with InferenceClient(p.url) as cli:
        out = cli.infer("mlp", {"x": X})
    assert out.outputs["y"].shape == (1, 3)
    metrics = p.get("/metrics")
    assert metrics is not None and 'endpoint="infer"' in metrics.text


def test_the_spec_comes_from_the_flag_then_the_env_then_the_manifest(
    mlp_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SPEC_ENV, raising=False)
    from_manifest = resolve_spec(None, mlp_artifact)
    assert from_manifest is not None and from_manifest.limits.max_batch == 64

    env_spec = spec_for(MLP_INPUTS, limits={"maxBatch": 5})
    monkeypatch.setenv(SPEC_ENV, json.dumps(env_spec))
    from_env = resolve_spec(None, mlp_artifact)
    assert from_env is not None and from_env.limits.max_batch == 5

    doc = {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": "mlp"},
        "spec": spec_for(MLP_INPUTS, limits={"maxBatch": 7}),
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    from_file = resolve_spec(path, mlp_artifact)
    assert from_file is not None and from_file.limits.max_batch == 7


def test_settings_take_batching_and_limits_from_the_spec() -> None:
    spec = AcceleratedModelSpec.model_validate(
        spec_for(MLP_INPUTS, batching={"enabled": True, "maxBatchSize": 9, "maxDelayMs": 3})
    )
    s = settings_for(spec, "http://next:8080", workers=2)
    assert (s.batching, s.max_batch_size, s.max_delay_ms, s.run_workers) == (True, 9, 3.0, 2)
    assert s.chain is not None and s.chain.next_url == "http://next:8080"
    assert settings_for(None, None, 1).chain is None


def test_an_invalid_spec_in_the_environment_exits_one_with_a_message(
    mlp_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SPEC_ENV, '{"inputs": []}')
    result = CliRunner().invoke(kubeaccel, ["serve", "--artifacts", str(mlp_artifact)])
    assert result.exit_code == 1
    assert "cannot read the spec" in result.output


def test_serve_is_registered_in_the_cli() -> None:
    result = CliRunner().invoke(kubeaccel, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--artifacts" in result.output and "--next" in result.output
