"""`kubeaccel run`: the whole flow as local processes, and every way it can fail cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from kubeaccel_runtime.client import InferenceClient
from kubeaccel_runtime.local.run import RunPaths, serve_foreground, write_spec
from kubeaccel_runtime.specfile import load_one
from rich.console import Console

pytestmark = pytest.mark.slow
BUDGET = 0.25  # max abs diff allowed for the tiny MLP under dynamic INT8


def _kubeaccel(cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kubeaccel_runtime.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split()[3]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


@pytest.fixture
def mlp_dir(tmp_path: Path, opt_models: Any, opt_spec_writer: Callable[..., Path]) -> Path:
    """A folder with a small MLP and a spec: dynamic INT8, two shards."""
    model = opt_models.mlp(seed=3)
    (tmp_path / "mlp.onnx").write_bytes(model.SerializeToString())
    digest = hashlib.sha256((tmp_path / "mlp.onnx").read_bytes()).hexdigest()
    opt_spec_writer(
        tmp_path,
        "mlp.onnx",
        digest,
        name="tiny",
        optimization={
            "quantization": {"mode": "dynamic-int8"},
            "partition": {"shards": 2},
            "accuracyBudget": {"maxAbsDiff": BUDGET},
        },
    )
    return tmp_path


def _wait_for_state(paths: RunPaths, proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if paths.state.exists():
            state: dict[str, Any] = json.loads(paths.state.read_text())
            return state
        if proc.poll() is not None:
            raise AssertionError(f"kubeaccel run exited early: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError("kubeaccel run never became ready")


def test_run_serves_two_chained_shards_like_the_original_and_sigterm_leaves_no_child(
    mlp_dir: Path,
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "kubeaccel_runtime.cli",
        "run",
        "-f",
        "tiny.yaml",
        "--workdir",
        "w",
    ]
    proc = subprocess.Popen(
        cmd, cwd=mlp_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    paths = RunPaths((mlp_dir / "w").resolve(), "tiny")
    try:
        state = _wait_for_state(paths, proc, timeout=150)
        shard_pids = [int(p) for p in state["shardPids"]]
        assert len(shard_pids) == 2 and all(_alive(p) for p in shard_pids)
        x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
        session = ort.InferenceSession(
            str(mlp_dir / "mlp.onnx"), providers=["CPUExecutionProvider"]
        )
        expected = session.run(None, {"input": x})[0]
        base = str(state["endpoint"]).split("/v2/")[0]
        with InferenceClient(base) as client:
            served = client.infer("tiny", {"input": x}).outputs["logits"]
        assert served.shape == expected.shape
        assert float(np.abs(served - expected).max()) <= BUDGET

        # The user-facing clients against the same chain.
        np.save(mlp_dir / "x.npy", x)
        infer = _kubeaccel(mlp_dir, "infer", "--endpoint", state["endpoint"], "--file", "x.npy")
        assert infer.returncode == 0, infer.stderr
        assert "logits: shape=[5, 10] dtype=float32" in infer.stdout
        rand = _kubeaccel(mlp_dir, "infer", "--endpoint", base, "--model", "tiny", "--random")
        assert rand.returncode == 0 and "logits: shape=[1, 10]" in rand.stdout, rand.stderr
        bench = _kubeaccel(
            mlp_dir, "bench", "--endpoint", state["endpoint"], "--requests", "40",
            "--concurrency", "4", "--output-json",
        )  # fmt: skip
        assert bench.returncode == 0, bench.stderr
        figures = json.loads(bench.stdout)
        assert figures["requests"] >= 40 and figures["errors"] == 0
        assert figures["p50_ms"] <= figures["p99_ms"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert not [p for p in shard_pids if _alive(p)]
    assert not paths.state.exists()


def test_a_second_run_reuses_the_artifact_and_force_reoptimizes(mlp_dir: Path) -> None:
    first = _kubeaccel(mlp_dir, "optimize", "--spec", "tiny.yaml", "--out", "w/artifacts/tiny")
    assert first.returncode == 0, first.stderr
    resource = load_one(mlp_dir / "tiny.yaml")
    from kubeaccel_runtime.local.run import optimize

    paths = RunPaths((mlp_dir / "w").resolve(), "tiny")
    cwd = os.getcwd()
    os.chdir(mlp_dir)
    try:
        assert optimize(resource, paths, force=False, console=Console(quiet=True)).reused
        assert not optimize(resource, paths, force=True, console=Console(quiet=True)).reused
    finally:
        os.chdir(cwd)


def test_an_invalid_spec_fails_with_its_field_path(mlp_dir: Path) -> None:
    text = (mlp_dir / "tiny.yaml").read_text().replace("shards: 2", "shards: 0")
    (mlp_dir / "bad.yaml").write_text(text)
    result = _kubeaccel(mlp_dir, "run", "-f", "bad.yaml", "--workdir", "w")
    assert result.returncode == 1
    assert "spec.optimization.partition.shards" in result.stderr


def test_an_unreachable_source_fails_clearly(mlp_dir: Path) -> None:
    text = (mlp_dir / "tiny.yaml").read_text().replace("file://mlp.onnx", "file://missing.onnx")
    (mlp_dir / "gone.yaml").write_text(text)
    result = _kubeaccel(mlp_dir, "run", "-f", "gone.yaml", "--workdir", "w")
    assert result.returncode == 1
    assert "missing.onnx" in result.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    text = (
        (mlp_dir / "tiny.yaml")
        .read_text()
        .replace("file://mlp.onnx", f"http://127.0.0.1:{closed_port}/mlp.onnx")
    )
    (mlp_dir / "http.yaml").write_text(text)
    result = _kubeaccel(mlp_dir, "run", "-f", "http.yaml", "--workdir", "w")
    assert result.returncode == 1
    assert f"127.0.0.1:{closed_port}" in result.stderr


def test_a_sha256_mismatch_fails_and_writes_no_artifact(mlp_dir: Path) -> None:
    text = (mlp_dir / "tiny.yaml").read_text()
    digest = hashlib.sha256((mlp_dir / "mlp.onnx").read_bytes()).hexdigest()
    (mlp_dir / "wrong.yaml").write_text(text.replace(digest, "f" * 64))
    result = _kubeaccel(mlp_dir, "run", "-f", "wrong.yaml", "--workdir", "w")
    assert result.returncode == 1
    assert "sha256" in result.stderr
    artifacts = mlp_dir / "w" / "artifacts" / "tiny"
    assert not artifacts.exists() or not any(artifacts.iterdir())


def test_a_port_in_use_fails_before_anything_starts(mlp_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _kubeaccel(
            mlp_dir, "run", "-f", "tiny.yaml", "--workdir", "w", "--port", str(port)
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert not (mlp_dir / "w" / "artifacts").exists()


def test_a_shard_that_crashes_at_start_is_named_and_no_process_is_left(mlp_dir: Path) -> None:
    result = _kubeaccel(mlp_dir, "optimize", "--spec", "tiny.yaml", "--out", "w/artifacts/tiny")
    assert result.returncode == 0, result.stderr
    artifact = next((mlp_dir / "w" / "artifacts" / "tiny").iterdir())
    shard1 = artifact / "shard-1.onnx"
    model = onnx.load(shard1)
    model.producer_name = "tampered"
    shard1.chmod(0o644)
    onnx.save(model, shard1)
    resource = load_one(mlp_dir / "tiny.yaml")
    paths = RunPaths((mlp_dir / "w").resolve(), "tiny")
    write_spec(resource, paths)
    console = Console(record=True, width=200)
    code = serve_foreground(resource, artifact, paths, port=None, ready_timeout=60, console=console)
    assert code == 1
    text = console.export_text()
    # Every shard verifies the whole artifact, so whichever exits first is the one named.
    assert re.search(r"shard [01] \(port \d+\) exited with code 1", text), text
    assert "sha256" in text
    assert all(not _alive(p) for p in _children_of(os.getpid()))


def test_infer_and_bench_fail_clearly_on_bad_arguments_or_no_server(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v2/models/m"
    both = _kubeaccel(tmp_path, "infer", "--endpoint", closed, "--random", "--file", "x.npy")
    assert both.returncode == 1 and "exactly one of --random or --file" in both.stderr
    no_model = _kubeaccel(tmp_path, "infer", "--endpoint", "http://127.0.0.1:1", "--random")
    assert no_model.returncode == 1 and "no model name" in no_model.stderr
    down = _kubeaccel(tmp_path, "infer", "--endpoint", closed, "--random")
    assert down.returncode == 1 and "cannot reach" in down.stderr
    bench = _kubeaccel(tmp_path, "bench", "--endpoint", closed, "--requests", "5")
    assert bench.returncode == 1 and "cannot reach" in bench.stderr


def test_the_embedding_example_optimizes_serves_and_answers_token_requests(tmp_path: Path) -> None:
    """examples/embedder.yaml end to end: INT8/4-bit embeddings -> `kubeaccel run` -> request."""
    repo = Path(__file__).resolve().parents[2]
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "kubeaccel_runtime.cli", "run", "-f", "examples/embedder.yaml"]
    proc = subprocess.Popen(
        [*cmd, "--workdir", str(work)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    paths = RunPaths(work.resolve(), "embedder")
    try:
        state = _wait_for_state(paths, proc, timeout=600)
        report = json.loads((paths.artifacts / str(state["artifact"]) / "report.json").read_text())
        # The embedding table is quantized: the served model is about a quarter of the size.
        assert report["sizes"]["sizeRatio"] < 0.3
        assert report["summary"]["gate"]["resolved"] is True
        assert report["summary"]["gate"]["samples"] == 3000
        with np.load(repo / "examples" / "models" / "topics-val-embedder.npz") as val:
            ids, labels = val["input_ids"][:16], val["labels"][:16]
        original = ort.InferenceSession(
            str(repo / "examples" / "models" / "embedder.onnx"),
            providers=["CPUExecutionProvider"],
        ).run(None, {"input_ids": ids})
        base = str(state["endpoint"]).split("/v2/")[0]
        with InferenceClient(base) as client:
            served = client.infer("embedder", {"input_ids": ids}).outputs
        assert served["logits"].shape == (16, 4) and served["embedding"].shape == (16, 64)
        agree = np.mean(served["logits"].argmax(1) == original[0].argmax(1))
        assert agree >= 0.9
        assert np.mean(served["logits"].argmax(1) == labels) >= 0.75
        # A token id outside the vocabulary is refused by the contract, not looked up.
        with InferenceClient(base) as client, pytest.raises(Exception, match="8191"):
            client.infer("embedder", {"input_ids": np.full((1, 32), 9000, np.int64)})
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "int4-weight-only" in out or "int8" in out
