"""Serve an optimized artifact with `kubeaccel serve` (every shard, chained) under load.

The shards run as local processes through the same supervisor `kubeaccel run` uses. Their
JSON logs say which provider each session really got and how long it took to create (a
TensorRT engine built at start shows there), and the artifact's engine folder is compared
before and after the start: a file added or rewritten means an engine was built at start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from kubeaccel_api.v1alpha1 import AcceleratedModel

from kubeaccel_runtime.artifact_manifest import read_manifest, sha256_file
from kubeaccel_runtime.loadgen import LoadError, LoadSpec, inputs_from_metadata, run
from kubeaccel_runtime.local.supervisor import Chain, ChainConfig, ShardFailed, free_ports

READY_TIMEOUT_S = 300.0
LOG_EVENTS = ("session created", "shard loaded", "provider fallback")


def _engine_files(artifact: Path) -> dict[str, str]:
    manifest = read_manifest(artifact)
    if manifest.engine_cache is None:
        return {}
    folder = artifact / manifest.engine_cache.dir
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def log_events(text: str) -> list[dict[str, Any]]:
    """The server's JSON log lines that tell which provider loaded the shard, and how fast."""
    events = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("msg") in LOG_EVENTS:
            events.append(doc)
    return events


def serve_under_load(
    resource: AcceleratedModel,
    artifact: Path,
    work: Path,
    *,
    concurrency: int,
    duration_s: float,
    threads: int,
) -> dict[str, Any]:
    """Start every shard, wait until ready, run the load generator, stop; errors are findings."""
    shards = len(read_manifest(artifact).shards)
    spec_file = work / "serve-spec.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(
        json.dumps(resource.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    cfg = ChainConfig(
        artifact_dir=artifact,
        spec_file=spec_file,
        shards=shards,
        ports=free_ports(shards),
        log_dir=work / "serve-logs",
        threads=threads,
    )
    engines_before = _engine_files(artifact)
    name = resource.metadata.name
    out: dict[str, Any] = {
        "artifact": str(artifact),
        "shards": shards,
        "executionProvider": resource.spec.runtime.execution_provider.value,
        "batching": resource.spec.runtime.batching.to_wire(),
        "concurrency": concurrency,
        "durationSeconds": duration_s,
    }
    chain = Chain(cfg)
    try:
        chain.start()
        chain.wait_ready(READY_TIMEOUT_S)
        out["engineFilesAddedOrRewritten"] = sorted(
            n for n, d in _engine_files(artifact).items() if engines_before.get(n) != d
        )
        meta = httpx.get(f"{chain.endpoint}/v2/models/{name}", timeout=10).json()
        load = run(
            LoadSpec(
                url=chain.endpoint,
                model=name,
                inputs=inputs_from_metadata(meta, 1),
                binary=True,
                concurrency=concurrency,
                requests=None,
                duration_s=duration_s,
            )
        )
        out["load"] = load.as_dict()
        out["error"] = None
    except (ShardFailed, LoadError, httpx.HTTPError, OSError) as exc:
        out["error"] = str(exc)
    finally:
        chain.stop()
    out["engineFiles"] = len(engines_before)
    out["logEvents"] = {
        f"shard-{s.index}": log_events(s.log_path.read_text(errors="replace"))
        for s in chain.shards
        if s.log_path.exists()
    }
    return out
