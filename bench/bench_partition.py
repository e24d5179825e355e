"""Partition benchmark: what shards cost in memory and what a shard chain serves, per example.

Run from the repository root:

    .venv/bin/python bench/bench_partition.py                 # print the tables
    .venv/bin/python bench/bench_partition.py --write-docs    # and update docs/benchmarks.md

Per example model (the original FP32 model, so partitioning is measured alone), the real
pipeline writes artifacts of 1, 2 and 4 shards for each balance (memory: weight bytes per
shard; compute: measured node times). Every artifact is served at once by `kubeaccel serve`
processes (the local supervisor, as `kubeaccel run` does), all on the same cores; threads per
process = cores / shards, so each setup has the same CPUs. Then, in --rounds rounds, each
setup in rotating order gets a closed-loop load of --concurrency clients sending batch-1
requests for --seconds (kubeaccel_runtime.loadgen, in this process, on the same cores).
Reported, against the 1-shard server of the same model:
- peak RSS (VmHWM) of each shard process; and the same minus the peak RSS of an identical
  server holding a trivial model (the runtime's own ~100 MB: Python, onnxruntime, the HTTP
  stack), i.e. what the model itself costs a shard;
- chain throughput (requests/s, median of the rounds, with their range);
- CPU time per request of every shard process (utime + stime over the rounds): on a shared
  machine the wall-clock throughput mostly says how busy the machine was, while CPU per
  request says what each process costs. With one core per process (as shard pods each get
  their own CPU in a cluster), a chain serves 1 / (its costliest shard's CPU per request)
  and the 1-shard server 1 / (its CPU per request): the "one core each" column compares
  those (the chain then uses N cores, the single server one: it says whether splitting
  costs more CPU than it spreads, not what N cores give one server).
Targets (issue 11): at 2 shards every shard's peak memory <= 0.6x the whole model's; the
2-shard chain's throughput >= 0.8x the 1-shard server's.

The example models hold 2-4 MB of weights next to a ~90 MB runtime, so their shards cannot
show what partitioning is for; `wide` (in --models) adds a synthetic model whose weights
dominate: WIDE_LAYERS Gemm layers of WIDE x WIDE FP32 weights (~134 MB), random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
from benchdoc import loads, publish
from kubeaccel_api.v1alpha1 import AcceleratedModel, PartitionBalance, QuantizationMode
from kubeaccel_runtime.artifact_manifest import read_manifest
from kubeaccel_runtime.loadgen import LoadSpec, inputs_from_metadata, run
from kubeaccel_runtime.local.supervisor import Chain, ChainConfig, free_ports
from kubeaccel_runtime.optimize.bench import BenchSettings
from kubeaccel_runtime.optimize.pipeline import RunOptions, run_optimization
from kubeaccel_runtime.specfile import load_one
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HEADING = "## Partitioning"
SHARDS = (1, 2, 4)
WIDE = 2048
WARMUP = 50
WIDE_LAYERS = 8


@dataclass
class Setup:
    """One served artifact: its shard processes and what was measured on them."""

    model: str
    shards: int
    balance: str
    artifact: Path
    spec_file: Path
    chain: Chain | None = None
    rps: list[float] = field(default_factory=list)
    requests: int = 0
    cpu_s: list[float] = field(default_factory=list)  # per shard, over every round
    hwm_mib: list[float] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    basis: str = ""

    @property
    def label(self) -> str:
        return "1 shard" if self.shards == 1 else f"{self.shards} shards, {self.balance}"


def fp32_resource(
    resource: AcceleratedModel, shards: int, balance: PartitionBalance
) -> AcceleratedModel:
    """The example spec with no pruning or quantization, partitioned as asked."""
    spec = resource.spec
    opt = spec.optimization
    optimization = opt.model_copy(
        update={
            "pruning": None,
            "quantization": opt.quantization.model_copy(
                update={"mode": QuantizationMode.NONE, "calibration": None}
            ),
            "partition": opt.partition.model_copy(update={"shards": shards, "balance": balance}),
        }
    )
    runtime = spec.runtime.model_copy(
        update={"batching": spec.runtime.batching.model_copy(update={"enabled": False})}
    )
    return resource.model_copy(
        update={"spec": spec.model_copy(update={"optimization": optimization, "runtime": runtime})}
    )


def wide_resource(work: Path) -> AcceleratedModel:
    """The synthetic `wide` model (Gemm + Relu layers) and a spec that serves it as it is."""
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i in range(WIDE_LAYERS):
        w = (rng.standard_normal((WIDE, WIDE)) / np.sqrt(WIDE)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Gemm", [last, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"relu{i}"))
        last = f"a{i}"
    nodes[-1] = helper.make_node("Relu", [f"h{WIDE_LAYERS - 1}"], ["y"], name="out")
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDE])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path = work / "wide.onnx"
    onnx.save(model, path)
    doc = {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": "wide"},
        "spec": {
            "source": {"uri": f"file://{path}", "allowUnverified": True},
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, WIDE]}],
            "runtime": {"executionProvider": "cpu"},
        },
    }
    spec = work / "wide.json"
    spec.write_text(json.dumps(doc))
    return load_one(spec)


def build(resource: AcceleratedModel, out: Path, threads: int) -> Path:
    """The artifact the real pipeline writes (cheap measurement settings)."""
    result = run_optimization(
        resource,
        out,
        force=True,
        options=RunOptions(
            threads=threads,
            bench=BenchSettings(iterations=3, warmup=1, profile_runs=3),
            cwd=ROOT,
            measure_rss=False,
            profile=False,
        ),
    )
    return result.path


def trivial_setup(work: Path, threads: int) -> Setup:
    """A server holding an Identity model: the runtime's own memory."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path = work / "identity.onnx"
    onnx.save(model, path)
    spec = {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": "identity"},
        "spec": {
            "source": {"uri": f"file://{path}", "allowUnverified": True},
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
            "runtime": {"executionProvider": "cpu"},
        },
    }
    spec_file = work / "identity.json"
    spec_file.write_text(json.dumps(spec))
    resource = load_one(spec_file)
    return Setup("identity", 1, "-", build(resource, work / "identity", threads), spec_file)


def start(setup: Setup, threads: int, logs: Path) -> None:
    """Serve every shard of the setup's artifact on loopback and wait until it is ready."""
    cfg = ChainConfig(
        artifact_dir=setup.artifact,
        spec_file=setup.spec_file,
        shards=setup.shards,
        ports=free_ports(setup.shards),
        log_dir=logs / f"{setup.model}-{setup.shards}-{setup.balance}",
        threads=threads,
    )
    setup.chain = Chain(cfg)
    setup.chain.start()
    setup.chain.wait_ready(120.0)


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(setup: Setup, name: str, concurrency: int, seconds: float) -> float:
    """Requests/s of a closed-loop batch-1 load on the setup's first shard (CPU recorded)."""
    assert setup.chain is not None
    pids = [s.process.pid for s in setup.chain.shards]
    before = [cpu_seconds(pid) for pid in pids]
    url = setup.chain.endpoint
    meta = httpx.get(f"{url}/v2/models/{name}", timeout=10).json()
    result = run(
        LoadSpec(
            url=url,
            model=name,
            inputs=inputs_from_metadata(meta, 1),
            concurrency=concurrency,
            requests=None,
            duration_s=seconds,
            warmup=WARMUP,
        )
    )
    if result.errors:
        raise RuntimeError(f"{setup.label}: {result.errors} errors under load")
    used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    setup.cpu_s = [a + b for a, b in zip(setup.cpu_s or [0.0] * len(used), used, strict=True)]
    # The first (checked) request and the warm-up ran inside the measured CPU window too.
    setup.requests += result.requests + WARMUP + 1
    return result.rps


def _med(values: list[float]) -> float:
    return float(np.median(values))


def bench_model(
    name: str, cores: int, rounds: int, concurrency: int, seconds: float, work: Path
) -> list[Setup]:
    """Serve 1/2/4-shard artifacts of one example and measure them."""
    resource = wide_resource(work) if name == "wide" else load_one(EXAMPLES / f"{name}.yaml")
    setups: list[Setup] = []
    for shards in SHARDS:
        for balance in PartitionBalance if shards > 1 else [PartitionBalance.MEMORY]:
            threads = max(1, cores // shards)
            res = fp32_resource(resource, shards, balance)
            artifact = build(res, work / f"{shards}-{balance.value}", threads)
            spec_file = work / f"{shards}-{balance.value}.json"
            spec_file.write_text(res.model_dump_json(by_alias=True, exclude_none=True))
            setup = Setup(name, shards, balance.value, artifact, spec_file)
            manifest = read_manifest(artifact)
            setup.bytes = [s.bytes for s in manifest.shards]
            report = json.loads((artifact / "report.json").read_text())
            setup.basis = report["partition"].get("costBasis", "")
            start(setup, threads, work / "logs")
            setups.append(setup)
    try:
        for r in range(rounds):
            order = setups[r % len(setups) :] + setups[: r % len(setups)]
            for setup in order:
                setup.rps.append(load(setup, name, concurrency, seconds))
        for setup in setups:
            assert setup.chain is not None
            setup.hwm_mib = [peak_rss_mib(s.process.pid) for s in setup.chain.shards]
    finally:
        for setup in setups:
            if setup.chain is not None:
                setup.chain.stop()
    return setups


def fmt(all_setups: list[Setup], runtime_mib: float) -> tuple[list[str], list[str]]:
    """The table and the target lines."""
    lines = [
        "| model | setup | cost basis | weights per shard (MB) | peak RSS per shard (MiB) "
        "| vs 1 shard | model's share vs 1 shard | req/s (c, batch 1) | vs 1 shard "
        "| CPU ms/request per shard | one core each: chain vs 1 shard |",
        "|---|---|---|---|---|---|---|---:|---:|---|---:|",
    ]
    targets = ["| target | measured | met |", "|---|---|---|"]
    for model in dict.fromkeys(s.model for s in all_setups):
        mine = [s for s in all_setups if s.model == model]
        whole = mine[0]
        whole_hwm = whole.hwm_mib[0]
        whole_rps = _med(whole.rps)
        whole_cpu = whole.cpu_s[0] / whole.requests
        for s in mine:
            cpu = [c / s.requests for c in s.cpu_s]
            bound = whole_cpu / max(cpu)
            rss = ", ".join(f"{h:.0f}" for h in s.hwm_mib)
            raw = ", ".join(f"{h / whole_hwm:.2f}" for h in s.hwm_mib)
            own = ", ".join(
                f"{(h - runtime_mib) / (whole_hwm - runtime_mib):.2f}" for h in s.hwm_mib
            )
            rps = _med(s.rps)
            lines.append(
                f"| {model} | {s.label} | {s.basis} | "
                f"{', '.join(f'{b / 1e6:.2f}' for b in s.bytes)} | {rss} | {raw} | {own} | "
                f"{rps:.0f} [{min(s.rps):.0f}-{max(s.rps):.0f}] | {rps / whole_rps:.2f}x | "
                f"{', '.join(f'{1000 * c:.2f}' for c in cpu)} | {bound:.2f}x |"
            )
            if s.shards == 2:
                worst_raw = max(s.hwm_mib) / whole_hwm
                worst_own = max((h - runtime_mib) / (whole_hwm - runtime_mib) for h in s.hwm_mib)
                targets.append(
                    f"| {model} 2 shards ({s.balance}): each shard's peak RSS <= 0.6x the whole "
                    f"model's | {worst_raw:.2f}x of the process; {worst_own:.2f}x of the model's "
                    f"own share | {'yes' if worst_raw <= 0.6 else '**no**'} (process), "
                    f"{'yes' if worst_own <= 0.6 else '**no**'} (model) |"
                )
                targets.append(
                    f"| {model} 2 shards ({s.balance}): chain throughput >= 0.8x 1 shard, same "
                    f"cores | {rps / whole_rps:.2f}x (one core per process: {bound:.2f}x) | "
                    f"{'yes' if rps / whole_rps >= 0.8 else '**no**'} |"
                )
    return lines, targets


def main(argv: list[str]) -> None:
    """Run the benchmark and print (optionally write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,transformer,cnn,embedder,wide")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="load per setup and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()
    started = time.perf_counter()
    setups: list[Setup] = []
    with tempfile.TemporaryDirectory(prefix="bench-partition-") as tmp:
        work = Path(tmp)
        identity = trivial_setup(work, cores)
        start(identity, cores, work / "logs")
        assert identity.chain is not None
        try:
            load(identity, "identity", args.concurrency, 1.0)
            runtime_mib = peak_rss_mib(identity.chain.shards[0].process.pid)
        finally:
            identity.chain.stop()
        for name in args.models.split(","):
            print(f"== {name}", file=sys.stderr, flush=True)
            folder = work / name
            folder.mkdir()
            setups += bench_model(name, cores, args.rounds, args.concurrency, args.seconds, folder)
    table, targets = fmt(setups, runtime_mib)
    body = [
        f"Machine: {platform.machine()}, {cores} cores shared by every server and the load "
        f"generator; threads per server process = {cores} / shards; {args.rounds} rounds of "
        f"{args.seconds:g} s per setup, {args.concurrency} concurrent clients, batch 1, binary "
        f"tensors. A server holding a trivial (Identity) model peaks at {runtime_mib:.0f} MiB: "
        f"that is the runtime, not the model. {loads(load_start, os.getloadavg())}.",
        "",
        *table,
        "",
        "Targets of issue 11, from the figures above:",
        "",
        *targets,
    ]
    seconds = time.perf_counter() - started
    publish(HEADING, "bench_partition.py", argv, seconds, body, args.write_docs)


if __name__ == "__main__":
    main(sys.argv[1:])
