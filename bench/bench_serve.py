"""Runtime server benchmark: raw onnxruntime vs the kubeaccel server vs KServe's model server.

    .venv/bin/python bench/bench_serve.py --write

Same models, same machine, interleaved rounds; every figure is reported next to raw
onnxruntime (in this process, same session options) measured in the same run:
  (a) raw ORT: `session.run` in a loop (batch 1, batch 32, best-batch throughput);
  (b) `kubeaccel serve` (one process, uvloop + httptools, 1 intra-op thread);
  (c) KServe's Python model server (`kserve` package, from the separate venv
      .venv-kserve so it cannot disturb the project's dependencies) wrapping an
      identical onnxruntime session.
Load comes from kubeaccel_runtime.loadgen (closed loop on loopback, bounded in count
and time) at concurrency 1, 8 and 64, with JSON and binary tensors, on an MLP
784-512-512-10 and the example CNN (examples/models/cnn.onnx, or an identical
architecture built here with random weights when the example has not been built).
`--stack` also compares web stacks (raw ASGI / Starlette / FastAPI) on a fixed response.
Total run time is about 6-10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_runtime.client import encode_request
from kubeaccel_runtime.loadgen import LoadSpec, raw_http_request, run
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
KSERVE_PY = REPO / ".venv-kserve" / "bin" / "python"
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "## Runtime server"
THREADS = 1

# --------------------------------------------------------------------------- models


def _finish(nodes: list[Any], x: Any, y: Any, inits: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bench", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def build_mlp(seed: int = 0) -> onnx.ModelProto:
    """MLP 784-512-512-10 (Gemm + Relu), He-scaled random weights."""
    rng = np.random.default_rng(seed)
    sizes = (784, 512, 512, 10)
    nodes, inits, prev = [], [], "input"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        last = i == len(sizes) - 2
        out = "logits" if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"]))
            prev = f"h{i}"
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    return _finish(nodes, x, y, inits)


def build_cnn(seed: int = 0) -> onnx.ModelProto:
    """The example CNN's architecture (1x32x32 -> conv 32/64/100 + pool -> 512 -> 10)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, cin = [], [], "input", 1
    for i, cout in enumerate((32, 64, 100)):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"cw{i}"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"cb{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [prev, f"cw{i}", f"cb{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
            helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]),
        ]
        prev, cin = f"p{i}", cout
    nodes.append(helper.make_node("Flatten", [prev], ["flat"]))
    for i, (a, b) in enumerate(((1600, 512), (512, 10))):
        w = (rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"fw{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"fb{i}"),
        ]
    nodes += [
        helper.make_node("Gemm", ["flat", "fw0", "fb0"], ["f0"]),
        helper.make_node("Relu", ["f0"], ["f0r"]),
        helper.make_node("Gemm", ["f0r", "fw1", "fb1"], ["logits"]),
    ]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    return _finish(nodes, x, y, inits)


def load_cnn() -> tuple[onnx.ModelProto, str]:
    """The built example CNN if present, else the same architecture with random weights."""
    path = REPO / "examples" / "models" / "cnn.onnx"
    if path.exists():
        return onnx.load(path), "examples/models/cnn.onnx"
    return build_cnn(), "CNN built by the bench (example architecture, random weights)"


# --------------------------------------------------------------------------- artifacts


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _io(model: onnx.ModelProto, kind: str) -> list[dict[str, Any]]:
    names = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64"}
    out = []
    for vi in getattr(model.graph, kind):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out.append({"name": vi.name, "dtype": names[t.elem_type], "shape": [-1, *dims[1:]]})
    return out


def write_artifact(root: Path, name: str, model: onnx.ModelProto, batching: bool) -> Path:
    """A one-shard artifact per the optimizer's contract (manifest with digests)."""
    inputs = _io(model, "input")
    spec = AcceleratedModelSpec.model_validate(
        {
            "source": {"uri": f"file://{name}.onnx", "allowUnverified": True},
            "inputs": inputs,
            "runtime": {
                "executionProvider": "cpu",
                "batching": {"enabled": batching, "maxBatchSize": 64, "maxDelayMs": 2},
            },
            "limits": {"maxBatch": 64, "maxRequestBytes": 64 * 1024 * 1024},
            # Distinct optimization sections give the two variants distinct artifact ids.
            "optimization": {"validation": {"seed": int(batching)}},
        }
    )
    aid = artifact_id(spec)
    out = root / aid
    out.mkdir(parents=True, exist_ok=True)
    shard = out / "shard-0.onnx"
    onnx.save(model, shard)
    (out / "report.json").write_text("{}")
    io_in, io_out = inputs, _io(model, "output")
    manifest = {
        "kubeaccelVersion": "0.1.0",
        "artifactId": aid,
        "modelName": name,
        "sourceSha256": _sha(shard),
        "executionProvider": "CPUExecutionProvider",
        "inputs": io_in,
        "outputs": io_out,
        "shards": [
            {
                "index": 0,
                "file": shard.name,
                "sha256": _sha(shard),
                "bytes": shard.stat().st_size,
                "inputs": io_in,
                "outputs": io_out,
            }
        ],
        "files": {shard.name: _sha(shard), "report.json": _sha(out / "report.json")},
        "spec": spec.to_wire(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# --------------------------------------------------------------------------- servers

KSERVE_SERVER = """
import argparse, logging
import numpy as np, onnxruntime as ort
from kserve import Model, ModelServer, InferRequest, InferResponse, InferOutput

p = argparse.ArgumentParser()
p.add_argument("--model"); p.add_argument("--name"); p.add_argument("--port", type=int)
p.add_argument("--threads", type=int)
a = p.parse_args()

class OrtModel(Model):
    def __init__(self):
        super().__init__(a.name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
        self.outs = [o.name for o in self.sess.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers=None):
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        values = self.sess.run(self.outs, feeds)
        binary = payload.use_binary_outputs
        outs = []
        for n, v in zip(self.outs, values):
            o = InferOutput(name=n, shape=list(v.shape), datatype="FP32")
            o.set_data_from_numpy(v, binary_data=binary)
            outs.append(o)
        return InferResponse(model_name=self.name, infer_outputs=outs, response_id=payload.id or "")

logging.getLogger().setLevel(logging.WARNING)
ModelServer(http_port=a.port, grpc_port=a.port + 1, workers=1, enable_grpc=False,
            enable_latency_logging=False, enable_docs_url=False).start([OrtModel()])
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server subprocess and how to reach it."""

    label: str
    model: str
    url: str
    proc: subprocess.Popen[bytes]

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}")
            try:
                if (
                    httpx.get(f"{self.url}/v2/models/{self.model}/ready", timeout=2).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.label} not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_kubeaccel(label: str, artifact: Path, model: str, *extra: str) -> Server:
    port = free_port()
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
        str(port),
        "--threads",
        str(THREADS),
        "--log-level",
        "warning",
        "--drain-seconds",
        "0",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Server(label, model, f"http://127.0.0.1:{port}", proc)


def start_kserve(script: Path, onnx_path: Path, model: str) -> Server:
    port = free_port()
    cmd = [
        str(KSERVE_PY),
        str(script),
        "--model",
        str(onnx_path),
        "--name",
        model,
        "--port",
        str(port),
        "--threads",
        str(THREADS),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Server("kserve", model, f"http://127.0.0.1:{port}", proc)


# --------------------------------------------------------------------------- raw ORT


def raw_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def raw_latency(
    sess: ort.InferenceSession, x: np.ndarray, count: int, seconds: float
) -> dict[str, float]:
    name = sess.get_inputs()[0].name
    for _ in range(20):
        sess.run(None, {name: x})
    lat = []
    deadline = time.perf_counter() + seconds
    while len(lat) < count and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        lat.append(time.perf_counter() - t0)
    ms = np.asarray(lat) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "items_per_s": x.shape[0] * len(lat) / float(ms.sum() / 1000),
    }


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """One load shape."""

    name: str
    batch: int
    concurrency: int
    binary: bool
    requests: int
    seconds: float


def scenarios(scale: float) -> list[Scenario]:
    out = []
    for binary in (False, True):
        enc = "bin" if binary else "json"
        out += [
            Scenario(f"c1-b1-{enc}", 1, 1, binary, int(1500 * scale), 3.0 * scale),
            Scenario(f"c1-b32-{enc}", 32, 1, binary, int(300 * scale), 3.0 * scale),
            Scenario(f"c8-b1-{enc}", 1, 8, binary, int(3000 * scale), 3.0 * scale),
            Scenario(f"c64-b1-{enc}", 1, 64, binary, int(4000 * scale), 3.0 * scale),
        ]
    return out


def sample(model: str, batch: int) -> np.ndarray:
    shape = (batch, 784) if model == "mlp" else (batch, 1, 32, 32)
    return np.random.default_rng(batch).random(shape, dtype=np.float32)


def load(server: Server, sc: Scenario) -> dict[str, Any]:
    """Closed-loop load from the load generator (concurrency > 1)."""
    spec = LoadSpec(
        url=server.url,
        model=server.model,
        inputs={"input": sample(server.model, sc.batch)},
        binary=sc.binary,
        concurrency=sc.concurrency,
        requests=sc.requests,
        duration_s=sc.seconds,
        warmup=max(10, sc.concurrency * 2),
        engine="raw",
        timeout_s=60,
    )
    return run(spec).as_dict()


class SyncConnection:
    """A blocking keep-alive HTTP/1.1 connection sending one fixed infer request."""

    def __init__(self, server: Server, x: np.ndarray, binary: bool) -> None:
        body, headers = encode_request({"input": x}, binary=binary, binary_outputs=binary)
        host, port, self.request = raw_http_request(server.url, server.model, body, headers)
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def call(self) -> int:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 20)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        match = re.search(rb"(?i)content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(rest) < length:
            rest += self.sock.recv(1 << 20)
        self.buf = rest[length:]
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


def pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of process `pid` (Linux)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(tid), cpus)


def paired(server: Server, sc: Scenario, sess: ort.InferenceSession) -> dict[str, Any]:
    """Concurrency 1: raw ORT and one server request alternate, so both see the same load.

    The machine's load drifts within seconds and its vCPUs are not equally busy, so runs
    taken at different moments (or on different CPUs) can even make a server look faster
    than onnxruntime itself. Here the bench and the server are pinned to one CPU and raw
    calls alternate with requests: both sides meet the same conditions.
    """
    x = sample(server.model, sc.batch)
    feeds = {sess.get_inputs()[0].name: x}
    everything = os.sched_getaffinity(0)
    one = {min(everything)}
    pin(os.getpid(), one)
    pin(server.proc.pid, one)
    conn = SyncConnection(server, x, sc.binary)
    try:
        for _ in range(10):
            conn.call()
            sess.run(None, feeds)
        raw, srv, statuses = [], [], 0
        deadline = time.perf_counter() + sc.seconds
        for i in range(sc.requests):
            if time.perf_counter() > deadline:
                break
            for first_raw in (True, False) if i % 2 == 0 else (False, True):
                t0 = time.perf_counter()
                if first_raw:
                    sess.run(None, feeds)
                    raw.append(time.perf_counter() - t0)
                else:
                    statuses += conn.call() != 200
                    srv.append(time.perf_counter() - t0)
    finally:
        conn.close()
        pin(server.proc.pid, everything)
        pin(os.getpid(), everything)
    s_ms, r_ms = np.asarray(srv) * 1000, np.asarray(raw) * 1000
    rate = len(srv) / float(s_ms.sum() / 1000)
    return {
        "requests": len(srv),
        "errors": statuses,
        "p50_ms": float(np.percentile(s_ms, 50)),
        "p99_ms": float(np.percentile(s_ms, 99)),
        "rps": rate,
        "items_per_s": rate * sc.batch,
        "raw_p50_ms": float(np.percentile(r_ms, 50)),
        "raw_items_per_s": len(raw) * sc.batch / float(r_ms.sum() / 1000),
    }


# --------------------------------------------------------------------------- web stacks

STACK_SERVER = """
import sys, uvicorn
BODY = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1,10],"data":[0,1,2,3,4,5,6,7,8,9]}]}'
kind, port, loop, http = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if kind == "raw":
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            m = await receive(); more = m.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
        await send({"type": "http.response.body", "body": BODY})
elif kind == "starlette":
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    async def infer(request):
        await request.body()
        return Response(BODY, media_type="application/json")
    app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
else:
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    app = FastAPI()
    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        await request.body()
        return Response(BODY, media_type="application/json")
uvicorn.run(app, host="127.0.0.1", port=port, loop=loop, http=http, log_level="warning", access_log=False, lifespan="off")
"""


def bench_stacks(tmp: Path, scale: float, rounds: int) -> dict[str, dict[str, Any]]:
    """Each web stack serving the same fixed answer; interleaved rounds, medians."""
    script = tmp / "stack.py"
    script.write_text(STACK_SERVER)
    variants = [
        ("raw ASGI, uvloop+httptools", "raw", "uvloop", "httptools"),
        ("raw ASGI, asyncio+h11", "raw", "asyncio", "h11"),
        ("Starlette, uvloop+httptools", "starlette", "uvloop", "httptools"),
        ("FastAPI, uvloop+httptools", "fastapi", "uvloop", "httptools"),
    ]
    procs: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    x = np.zeros((1, 784), np.float32)
    try:
        for label, kind, loop, http in variants:
            port = free_port()
            procs[label] = (
                port,
                subprocess.Popen([sys.executable, str(script), kind, str(port), loop, http]),
            )
        for port, _ in procs.values():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    httpx.post(
                        f"http://127.0.0.1:{port}/v2/models/m/infer", content=b"{}", timeout=1
                    )
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
        for rnd in range(rounds):
            order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
            for label, *_ in order:
                port = procs[label][0]
                for conc in (1, 64):
                    spec = LoadSpec(
                        url=f"http://127.0.0.1:{port}",
                        model="m",
                        inputs={"input": x},
                        binary=False,
                        concurrency=conc,
                        requests=int(3000 * scale),
                        duration_s=2 * scale,
                        warmup=50,
                        check_first=False,
                    )
                    r = run(spec)
                    samples[label][f"c{conc}-p50"].append(r.p50_ms)
                    samples[label][f"c{conc}-rps"].append(r.rps)
    finally:
        for _, proc in procs.values():
            proc.terminate()
            proc.wait(10)
    results: dict[str, dict[str, Any]] = {}
    for label, *_ in variants:
        got = samples[label]
        results[label] = {
            "c1": {"p50_ms": median(got["c1-p50"]), "rps": median(got["c1-rps"])},
            "c64": {"p50_ms": median(got["c64-p50"]), "rps": median(got["c64-rps"])},
        }
        print(
            f"  stack {label:32s} c1 p50 {results[label]['c1']['p50_ms']:.3f} ms  "
            f"c64 {results[label]['c64']['rps']:.0f} req/s",
            flush=True,
        )
    return results


# --------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def build_report(res: dict[str, Any]) -> tuple[str, list[str]]:
    """Markdown tables and the target verdicts."""
    lines: list[str] = []
    verdicts: list[str] = []
    runs = res["runs"]  # runs[model][label][scenario] -> list of dicts
    raw = res["raw"]  # raw[model][key] -> list of dicts

    def m(model: str, label: str, sc: str, key: str) -> float:
        return median([r[key] for r in runs[model].get(label, {}).get(sc, [])])

    def rm(model: str, key: str, field: str) -> float:
        return median([r[field] for r in raw[model][key]])

    for model in res["models"]:
        raw1, raw32 = rm(model, "b1", "p50_ms"), rm(model, "b32", "p50_ms")
        best = max(rm(model, f"b{b}", "items_per_s") for b in (1, 8, 32, 64))
        raw_rps1 = rm(model, "b1", "items_per_s")
        lines += [
            f"### {model} ({res['model_notes'][model]})",
            "",
            f"Raw onnxruntime in-process: batch 1 p50 {raw1:.3f} ms ({raw_rps1:.0f} calls/s), "
            f"batch 32 p50 {raw32:.3f} ms, best-batch throughput {best:.0f} items/s. "
            "Concurrency-1 rows are compared with raw onnxruntime calls alternated with the "
            "server's requests (same moments, same load); the other rows with raw "
            "onnxruntime measured just before them.",
            "",
            "| scenario | server | p50 ms | p99 ms | req/s | items/s | p50 vs raw ORT | req/s vs raw ORT |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for sc in res["scenario_names"]:
            for label in ("kubeaccel", "kubeaccel-thread", "kubeaccel-batching", "kserve"):
                if sc not in runs[model].get(label, {}):
                    continue
                p50, p99 = m(model, label, sc, "p50_ms"), m(model, label, sc, "p99_ms")
                rps, ips = m(model, label, sc, "rps"), m(model, label, sc, "items_per_s")
                if sc.startswith("c1-"):  # paired with raw ORT, back to back
                    ref = m(model, label, sc, "raw_p50_ms")
                    ref_rate = m(model, label, sc, "raw_items_per_s")
                else:
                    ref = raw32 if "-b32-" in sc else raw1
                    ref_rate = rm(model, "b32" if "-b32-" in sc else "b1", "items_per_s")
                lines.append(
                    f"| {sc} | {label} | {p50:.3f} | {p99:.3f} | {rps:.0f} | {ips:.0f} | "
                    f"{p50 / ref:.2f}x | {ips / ref_rate:.2f}x |"
                )
        lines.append("")

        # Targets.
        def paired_stat(sc: str, how: str, model: str = model) -> float:
            rows = runs[model]["kubeaccel"][sc]
            if how == "diff":
                return median([r["p50_ms"] - r["raw_p50_ms"] for r in rows])
            return median([r["p50_ms"] / r["raw_p50_ms"] for r in rows])

        for enc in ("bin", "json"):
            added = paired_stat(f"c1-b1-{enc}", "diff")
            verdicts.append(
                f"{model}: added latency at batch 1 ({enc}) = {added:.3f} ms "
                f"(target ≤ 0.5) {'HIT' if added <= 0.5 else 'MISSED'}"
            )
        if model == "cnn":
            ratio = paired_stat("c1-b32-bin", "ratio")
            verdicts.append(
                f"cnn: batch 32 binary p50 = {ratio:.2f}x raw ORT (target ≤ 1.3x) "
                f"{'HIT' if ratio <= 1.3 else 'MISSED'}"
            )
        for enc in ("bin", "json"):
            sc = f"c64-b1-{enc}"
            ka, ks = m(model, "kubeaccel", sc, "rps"), m(model, "kserve", sc, "rps")
            p99a, p99s = m(model, "kubeaccel", sc, "p99_ms"), m(model, "kserve", sc, "p99_ms")
            if ks == ks:  # not NaN: KServe ran
                verdicts.append(
                    f"{model}: c64 single-item ({enc}) req/s = {ka / ks:.1f}x KServe (target ≥ 3x) "
                    f"{'HIT' if ka / ks >= 3 else 'MISSED'}; p99 = {p99a / p99s:.2f}x KServe "
                    f"(target ≤ 0.3x) {'HIT' if p99a / p99s <= 0.3 else 'MISSED'}"
                )
        if "kubeaccel-batching" in runs[model]:
            ips = m(model, "kubeaccel-batching", "c64-b1-bin", "items_per_s")
            verdicts.append(
                f"{model}: c64 single-item with dynamic batching = {ips:.0f} items/s = "
                f"{ips / best:.2f}x raw ORT best-batch"
                + (
                    f" (target ≥ 0.5x) {'HIT' if ips / best >= 0.5 else 'MISSED'}"
                    if model == "cnn"
                    else ""
                )
            )
    return "\n".join(lines), verdicts


def stack_table(stacks: dict[str, dict[str, Any]]) -> str:
    if not stacks:
        return ""
    rows = [
        "| web stack (fixed 100-byte answer) | c1 p50 ms | c64 req/s |",
        "|---|---:|---:|",
    ]
    for label, row in stacks.items():
        rows.append(f"| {label} | {row['c1']['p50_ms']:.3f} | {row['c64']['rps']:.0f} |")
    return "\n".join(rows)


NOTES = [
    "Reading the misses:",
    "",
    "- c64 p99: a closed loop on 2 shared cores has a long scheduling tail of its own. The "
    "same load generator against a fixed-answer raw ASGI app (no model, no validation) "
    "measured p99 at 2-4x its p50 on this machine; KServe's ~4x longer service time hides "
    "that jitter relative to its own p50, so the p99 ratio stays above 0.3x even where "
    "kubeaccel's throughput is 4x KServe's.",
    "- CNN at c64 without batching is compute-bound: one session with one intra-op thread "
    "spends ~0.21 ms per item in onnxruntime, the HTTP and validation work adds ~0.2 ms, and "
    "the load generator needs the second core; the ratio to KServe moved between 2.4x and "
    "2.9x across runs. With dynamic batching on (the kubeaccel-batching row) the same server "
    "passes 3.5x KServe's requests/s.",
    "- Raw onnxruntime on this CNN is bimodal at batch 32 (about 5.8 ms or 10 ms per call, "
    "depending on what else runs on the other vCPU); that is why the concurrency-1 rows pair "
    "raw calls with server requests on one pinned CPU instead of comparing separate runs.",
    "- kubeaccel vs kubeaccel-thread: a thread hand-off costs ~0.08 ms, which is why short "
    "calls run on the event loop when nothing else is in flight; under concurrency the "
    "thread lets HTTP work overlap the computation for models slower than ~0.1 ms per item.",
]


def write_doc(section: str, heading: str = HEADING) -> None:
    """Replace (or append) the `heading` section (default '## Runtime server') of the doc."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    else:
        nxt = text.find("\n## ", start + len(heading))
        end = len(text) if nxt == -1 else nxt + 1
        text = text[:start] + section.rstrip() + "\n" + ("\n" + text[end:] if nxt != -1 else "")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (medians reported).")
    ap.add_argument("--scale", type=float, default=1.0, help="Scale request counts and time caps.")
    ap.add_argument("--no-kserve", action="store_true", help="Skip KServe (no .venv-kserve).")
    ap.add_argument("--no-stack", action="store_true", help="Skip the web-stack comparison.")
    ap.add_argument("--write", action="store_true", help="Update docs/benchmarks.md.")
    ap.add_argument("--json", type=Path, default=None, help="Also write raw results here.")
    args = ap.parse_args()
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    use_kserve = not args.no_kserve and KSERVE_PY.exists()
    if not args.no_kserve and not use_kserve:
        print(
            f"KServe venv missing ({KSERVE_PY}); create it with:\n  python -m venv .venv-kserve && "
            ".venv-kserve/bin/pip install kserve onnxruntime==1.31.1\nrunning without KServe."
        )

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cnn, cnn_note = load_cnn()
    models = {"mlp": (build_mlp(), "784-512-512-10, random weights"), "cnn": (cnn, cnn_note)}
    servers: dict[str, dict[str, Server]] = defaultdict(dict)
    (tmp / "kserve_server.py").write_text(KSERVE_SERVER)
    res: dict[str, Any] = {
        "models": list(models),
        "model_notes": {k: v[1] for k, v in models.items()},
        "runs": defaultdict(lambda: defaultdict(lambda: defaultdict(list))),
        "raw": defaultdict(lambda: defaultdict(list)),
    }
    scs = scenarios(args.scale)
    res["scenario_names"] = [s.name for s in scs]
    try:
        stacks = {} if args.no_stack else bench_stacks(tmp, args.scale, args.rounds)
        plain_artifacts: dict[str, Path] = {}
        for name, (model, _) in models.items():
            plain = plain_artifacts[name] = write_artifact(tmp / "a", name, model, batching=False)
            batched = write_artifact(tmp / "a", name, model, batching=True)
            servers[name]["kubeaccel"] = start_kubeaccel("kubeaccel", plain, name)
            servers[name]["kubeaccel-thread"] = start_kubeaccel(
                "kubeaccel-thread", plain, name, "--inline-run-ms", "0"
            )
            servers[name]["kubeaccel-batching"] = start_kubeaccel(
                "kubeaccel-batching", batched, name
            )
            if use_kserve:
                servers[name]["kserve"] = start_kserve(
                    tmp / "kserve_server.py", plain / "shard-0.onnx", name
                )
        for per_model in servers.values():
            for srv in per_model.values():
                srv.wait_ready()
        sessions = {n: raw_session(a / "shard-0.onnx") for n, a in plain_artifacts.items()}

        for rnd in range(args.rounds):
            print(f"== round {rnd + 1}/{args.rounds}", flush=True)
            order = list(models) if rnd % 2 == 0 else list(reversed(models))
            for name in order:
                sess = sessions[name]

                def measure_raw(
                    b: int, sess: ort.InferenceSession = sess, name: str = name
                ) -> None:
                    res["raw"][name][f"b{b}"].append(
                        raw_latency(
                            sess, sample(name, b), int(1000 * args.scale / b) + 30, 1.0 * args.scale
                        )
                    )

                for b in (8, 64):
                    measure_raw(b)
                labels = ["kubeaccel", "kserve"] if rnd % 2 == 0 else ["kserve", "kubeaccel"]
                for sc in scs:
                    # Raw ORT right next to the server runs it is compared with: the machine's
                    # load drifts within minutes.
                    measure_raw(sc.batch)
                    for label in labels:
                        if label not in servers[name]:
                            continue
                        if sc.concurrency == 1:
                            r = paired(servers[name][label], sc, sess)
                        else:
                            r = load(servers[name][label], sc)
                        res["runs"][name][label][sc.name].append(r)
                        print(
                            f"  {name:4s} {label:10s} {sc.name:14s} p50 {r['p50_ms']:8.3f} ms "
                            f"p99 {r['p99_ms']:8.3f} ms {r['rps']:8.0f} req/s",
                            flush=True,
                        )
                    if sc.name in ("c1-b1-bin", "c64-b1-bin"):
                        thread = servers[name]["kubeaccel-thread"]
                        r = paired(thread, sc, sess) if sc.concurrency == 1 else load(thread, sc)
                        res["runs"][name]["kubeaccel-thread"][sc.name].append(r)
                    if sc.name == "c64-b1-bin":
                        r = load(servers[name]["kubeaccel-batching"], sc)
                        res["runs"][name]["kubeaccel-batching"][sc.name].append(r)
                        print(
                            f"  {name:4s} batching   {sc.name:14s} {r['items_per_s']:8.0f} items/s",
                            flush=True,
                        )
    finally:
        for per_model in servers.values():
            for srv in per_model.values():
                srv.stop()

    tables, verdicts = build_report(res)
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()[0]
    cmd = ".venv/bin/python bench/bench_serve.py --write"
    section = "\n".join(
        [
            HEADING,
            "",
            f"Command: `{cmd}` (about {elapsed / 60:.0f} minutes; {args.rounds} interleaved rounds, "
            "medians). Machine: "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), shared with other "
            f"work (1-minute load average {load_before:.1f} at the start, {load_after:.1f} at the "
            "end), so absolute times swing; compare the ratios, measured in the same run. Every "
            f"server and raw onnxruntime use {THREADS} intra-op thread with spinning off; the load "
            "generator (kubeaccel_runtime.loadgen, raw HTTP/1.1 keep-alive engine) runs in the bench "
            "process on the same 2 cores, closed loop, bounded in count and time. "
            "kubeaccel = `kubeaccel serve` (raw ASGI on uvicorn + uvloop + httptools; short session "
            "calls run on the event loop when no other request is in flight), kubeaccel-thread = the same with every call in the worker "
            "thread (`--inline-run-ms 0`), kubeaccel-batching = dynamic batching on (maxBatchSize "
            "64, maxDelayMs 2), kserve = KServe's Python model server "
            f"(kserve {_kserve_version()}, from .venv-kserve) wrapping an identical onnxruntime session.",
            "",
            "### Targets",
            "",
            *[f"- {v}" for v in verdicts],
            "",
            *NOTES,
            "",
            tables,
            "### Web stack",
            "",
            "Why a raw ASGI app: the same fixed answer served by each stack, same load generator "
            "(c1 = one client, c64 = 64 concurrent clients).",
            "",
            stack_table(stacks),
            "",
        ]
    )
    print(section)
    if args.json:
        args.json.write_text(
            json.dumps({**res, "stacks": stacks}, indent=1, default=lambda o: dict(o))
        )
    if args.write:
        write_doc(section)
        print(f"wrote {DOC}")
    return 0


def _kserve_version() -> str:
    if not KSERVE_PY.exists():
        return "not installed"
    out = subprocess.run(
        [str(KSERVE_PY), "-c", "from importlib.metadata import version; print(version('kserve'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
