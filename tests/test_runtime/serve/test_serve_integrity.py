"""A served artifact that changes on the volume: detected, the model withdrawn, nothing answered."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from kubeaccel_runtime.client import encode_request
from kubeaccel_runtime.serve.app import ModelSlot, ServeApp
from kubeaccel_runtime.serve.integrity import IntegrityWatch, artifact_problem
from kubeaccel_runtime.serve.session import LoadedModel, load_shard
from serve_fixtures import CPU1

X = np.ones((1, 4), dtype=np.float32)


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def served(mlp_artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the MLP artifact that the test may damage."""
    return Path(shutil.copytree(mlp_artifact, tmp_path / mlp_artifact.name))


def test_an_intact_artifact_has_no_problem(served: Path) -> None:
    assert artifact_problem(served) is None


@pytest.mark.parametrize("damaged", ["shard-0.onnx", "report.json"])
def test_one_flipped_bit_in_any_listed_file_is_a_sha256_mismatch(
    served: Path, damaged: str
) -> None:
    flip_a_bit(served / damaged)
    problem = artifact_problem(served)
    assert problem is not None and f"{damaged}: sha256 mismatch" in problem


def test_a_deleted_artifact_is_a_problem_too(served: Path) -> None:
    shutil.rmtree(served)
    problem = artifact_problem(served)
    assert problem is not None and "not a directory" in problem


def test_the_watch_reports_the_first_problem_once_and_stops(served: Path) -> None:
    seen: list[str] = []
    called = threading.Event()

    def on_invalid(reason: str) -> None:
        seen.append(reason)
        called.set()

    watch = IntegrityWatch(served, 0.01, on_invalid)
    watch.start()
    try:
        assert not called.wait(0.1), "an intact artifact must not be reported"
        flip_a_bit(served / "shard-0.onnx")
        assert called.wait(10)
        watch._thread.join(10)
        assert not watch._thread.is_alive()
    finally:
        watch.stop()
    assert len(seen) == 1 and "sha256 mismatch" in seen[0]


def test_the_interval_must_be_positive(served: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        IntegrityWatch(served, 0, lambda _: None)


async def test_a_withdrawn_model_is_not_ready_and_refuses_every_request(
    served: Path, app_factory: Callable[..., ServeApp]
) -> None:
    model: LoadedModel = load_shard(served, 0, config=CPU1)
    slot = ModelSlot("mlp")
    slot.set(model)
    app = app_factory(slot)
    body, headers = encode_request({"x": X}, binary=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/v2/models/mlp/infer", content=body, headers=headers)).is_success
        slot.withdraw("shard-0.onnx: sha256 mismatch")
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"] == "model withdrawn: shard-0.onnx: sha256 mismatch"
        answer = await client.post("/v2/models/mlp/infer", content=body, headers=headers)
        assert answer.status_code == 503 and "sha256 mismatch" in answer.json()["error"]
        assert (await client.get("/v2/health/live")).status_code == 200
