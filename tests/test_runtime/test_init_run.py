"""The first minute, as a user runs it: `kubeaccel init` -> `validate` -> `run`, then a
standard OIP v2 client (tritonclient) gets answers, and the contract read from the model
turns a wrong request away."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
OIP = {"float32": "FP32", "int64": "INT64"}


def _kubeaccel(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kubeaccel_runtime.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _endpoint(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("ready: "))
    return line.removeprefix("ready: ").strip()


@pytest.fixture
def stopper(tmp_path: Path) -> Iterator[list[str]]:
    """Names of detached runs under tmp_path/w, stopped at the end whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        _kubeaccel(tmp_path, "stop", name, "--workdir", "w", timeout=60)


def _ask(endpoint: str, inputs: list[dict[str, object]], batch: int) -> list[np.ndarray]:
    """One tritonclient request shaped by the contract (batch for -1); the outputs."""
    base, _, name = endpoint.removeprefix("http://").partition("/v2/models/")
    client = httpclient.InferenceServerClient(url=base)
    try:
        requests = []
        for spec in inputs:
            shape = [batch if d == -1 else int(d) for d in spec["shape"]]  # type: ignore[union-attr]
            data = np.random.default_rng(0).random(shape).astype(str(spec["dtype"]))
            tensor = httpclient.InferInput(str(spec["name"]), shape, OIP[str(spec["dtype"])])
            tensor.set_data_from_numpy(data)
            requests.append(tensor)
        result = client.infer(name, requests)
        return [result.as_numpy(o["name"]) for o in result.get_response()["outputs"]]
    finally:
        client.close()


def _first_minute(tmp_path: Path, model: Path, stopper: list[str]) -> None:
    init = _kubeaccel(tmp_path, "init", model.name, "-o", "spec.yaml")
    assert init.returncode == 0, init.stderr
    validate = _kubeaccel(tmp_path, "validate", "-f", "spec.yaml")
    assert validate.returncode == 0, validate.stderr
    doc = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    stopper.append(doc["metadata"]["name"])
    run = _kubeaccel(tmp_path, "run", "-f", "spec.yaml", "--detach", "--workdir", "w")
    assert run.returncode == 0, run.stdout + run.stderr
    endpoint = _endpoint(run.stdout)
    inputs = doc["spec"]["inputs"]
    [out, *_] = _ask(endpoint, inputs, batch=3)
    assert out.shape[0] == 3 and np.isfinite(out).all()
    wrong = [{**inputs[0], "shape": [-1, *[d + 1 for d in inputs[0]["shape"][1:]]]}]
    with pytest.raises(InferenceServerException, match="dimension 1 must be"):
        _ask(endpoint, wrong, batch=1)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_every_example_model_is_served_from_the_spec_init_writes(
    tmp_path: Path, stopper: list[str], name: str
) -> None:
    model = tmp_path / f"{name}.onnx"
    shutil.copy(ROOT / "examples" / "models" / f"{name}.onnx", model)
    _first_minute(tmp_path, model, stopper)


def test_the_mlp_example_too_and_run_model_directly_serves_what_init_described(
    tmp_path: Path, stopper: list[str]
) -> None:
    shutil.copy(ROOT / "examples" / "models" / "mlp.onnx", tmp_path / "mlp.onnx")
    _first_minute(tmp_path, tmp_path / "mlp.onnx", stopper)
    assert _kubeaccel(tmp_path, "stop", "mlp", "--workdir", "w").returncode == 0
    run = _kubeaccel(tmp_path, "run", "mlp.onnx", "--detach", "--workdir", "w")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "spec (kubeaccel init mlp.onnx):" in run.stderr
    # The same source and optimization as the spec init wrote: the same artifact.
    assert "(reused: same source and optimization)" in run.stdout
    written = yaml.safe_load((tmp_path / "w" / "mlp" / "init.yaml").read_text())
    assert written["spec"] == yaml.safe_load((tmp_path / "spec.yaml").read_text())["spec"]
    [out] = _ask(_endpoint(run.stdout), written["spec"]["inputs"], batch=2)
    assert out.shape == (2, 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_an_onnx_file_exported_from_a_fresh_torch_module_is_served(
    tmp_path: Path, stopper: list[str], opt_torch_exporter: Any
) -> None:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5)
    ).eval()
    opt_torch_exporter(module, 12, tmp_path / "fresh.onnx")
    _first_minute(tmp_path, tmp_path / "fresh.onnx", stopper)


def test_run_wants_a_model_or_a_spec_but_not_both(tmp_path: Path) -> None:
    neither = _kubeaccel(tmp_path, "run", "--workdir", "w")
    both = _kubeaccel(tmp_path, "run", "m.onnx", "-f", "m.yaml", "--workdir", "w")
    for result in (neither, both):
        assert result.returncode == 2 and "give either MODEL or -f SPEC" in result.stderr
    pickled = tmp_path / "m.pkl"
    pickled.write_bytes(b"\x80\x04K\x01.")
    refused = _kubeaccel(tmp_path, "run", "m.pkl", "--workdir", "w")
    assert refused.returncode == 1 and "never unpickles" in refused.stderr
    assert not (tmp_path / "w").exists()
