"""Helpers for the inference server tests: tiny ONNX graphs, artifacts, real servers.

Models are built with onnx.helper from a fixed seed; artifacts follow the optimizer's
contract (shard files, manifest.json with every sha256, report.json) so the server's
real loader reads them. Servers run under uvicorn on a free loopback port.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnx.utils
import uvicorn
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_runtime.serve.app import ServeApp
from kubeaccel_runtime.serve.session import SessionConfig
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9
CPU1 = SessionConfig(intra_op_threads=1)


def _model(
    nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_mlp(seed: int = 0, sizes: tuple[int, int, int] = (4, 8, 3)) -> onnx.ModelProto:
    """x[-1,in] -> MatMul+Add+Relu -> hidden[-1,h] -> MatMul+Add -> y[-1,out]."""
    rng = np.random.default_rng(seed)
    n_in, n_hidden, n_out = sizes
    inits = [
        numpy_helper.from_array(rng.standard_normal((n_in, n_hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(n_hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((n_hidden, n_out)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["y"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )


def build_two_inputs() -> onnx.ModelProto:
    """x FP32[-1,4], k INT64[-1,1], mask BOOL[-1,4] -> y = where(mask, x*k, 0), flag = y > 0."""
    nodes = [
        helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "kf"], ["prod"]),
        helper.make_node("Where", ["mask", "prod", "zero"], ["y"]),
        helper.make_node("Greater", ["y", "zero"], ["flag"]),
    ]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch", 4]),
        ],
        [zero],
    )


def build_sqrt() -> onnx.ModelProto:
    """x FP32[-1,2] -> y = sqrt(x): negative inputs give NaN outputs."""
    return _model(
        [helper.make_node("Sqrt", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [],
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _infos(model: onnx.ModelProto, kind: str) -> list[dict[str, Any]]:
    dtypes = {
        TensorProto.FLOAT: "float32",
        TensorProto.INT64: "int64",
        TensorProto.BOOL: "bool",
        TensorProto.FLOAT16: "float16",
        TensorProto.UINT8: "uint8",
    }
    out = []
    for vi in getattr(model.graph, kind):
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out.append({"name": vi.name, "dtype": dtypes[t.elem_type], "shape": shape})
    return out


def write_artifact(
    root: Path,
    model: onnx.ModelProto,
    spec: dict[str, Any],
    *,
    name: str = "demo",
    cut: list[str] | None = None,
) -> Path:
    """Write an artifact directory per the optimizer's contract; `cut` splits into 2 shards."""
    parsed = AcceleratedModelSpec.model_validate(spec)
    aid = artifact_id(parsed)
    out = root / aid
    out.mkdir(parents=True)
    whole = root / f"{aid}-whole.onnx"
    onnx.save(model, whole)
    model_in = [i["name"] for i in _infos(model, "input")]
    model_out = [o["name"] for o in _infos(model, "output")]
    stages = [(model_in, cut), (cut, model_out)] if cut else [(model_in, model_out)]
    shards = []
    for index, (ins, outs) in enumerate(stages):
        path = out / f"shard-{index}.onnx"
        if len(stages) == 1:
            onnx.save(model, path)
        else:
            onnx.utils.extract_model(str(whole), str(path), ins, outs)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(path))
        infos_in = [i for i in _infos(inferred, "input")]
        infos_out = _infos(inferred, "output")
        # extract_model drops symbolic dims on cut tensors; the batch stays dynamic.
        for info in (*infos_in, *infos_out):
            info["shape"] = [-1, *info["shape"][1:]] if info["shape"] else info["shape"]
        shards.append(
            {
                "index": index,
                "file": path.name,
                "sha256": _sha(path),
                "bytes": path.stat().st_size,
                "inputs": infos_in,
                "outputs": infos_out,
            }
        )
    whole.unlink()
    report = out / "report.json"
    report.write_text(json.dumps({"summary": {"artifactId": aid}}))
    files = {s["file"]: s["sha256"] for s in shards} | {"report.json": _sha(report)}
    manifest = {
        "kubeaccelVersion": "0.1.0",
        "artifactId": aid,
        "modelName": name,
        "sourceSha256": "0" * 64,
        "executionProvider": "CPUExecutionProvider",
        "inputs": _infos(model, "input"),
        "outputs": _infos(model, "output"),
        "shards": shards,
        "files": files,
        "spec": parsed.to_wire(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def spec_for(
    inputs: list[dict[str, Any]],
    *,
    outputs: list[dict[str, Any]] | None = None,
    batching: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    shards: int = 1,
) -> dict[str, Any]:
    """A valid spec (wire form) with the given contract."""
    spec: dict[str, Any] = {
        "source": {"uri": "file://model.onnx", "allowUnverified": True},
        "inputs": inputs,
        "runtime": {"executionProvider": "cpu", "batching": batching or {"enabled": False}},
        "optimization": {"partition": {"shards": shards}},
    }
    if outputs is not None:
        spec["outputs"] = outputs
    if limits is not None:
        spec["limits"] = limits
    return spec


MLP_INPUTS = [
    {"name": "x", "dtype": "float32", "shape": [-1, 4], "range": {"min": -100, "max": 100}}
]


def wait_until(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 in a background thread."""

    def __init__(self, app: ServeApp, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            loop="asyncio",
            http="httptools",  # the parser production uses (uvloop stays out: it is process-wide)
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


class Proc:
    """A `kubeaccel serve` subprocess on a free port, with its stderr collected."""

    def __init__(self, artifact: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-c",
            "from kubeaccel_runtime.cli import main; main()",
            "serve",
            "--artifacts",
            str(artifact),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--threads",
            "1",
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.url + path, timeout=2)
        except httpx.TransportError:
            return None

    def wait_for(self, path: str, status: int, timeout: float = 30) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.get(path)
            if r is not None and r.status_code == status:
                return r
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"{path} never answered {status}:\n{''.join(self.lines)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)

    def logs(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]
