"""A small Open Inference Protocol v2 load generator (used by bench/ and `kubeaccel bench`).

Closed loop: `concurrency` workers each send the same pre-encoded request, wait for the
answer, and repeat until `requests` answers or `duration_s` seconds, whichever comes
first. Two engines: `raw` (HTTP/1.1 keep-alive on asyncio streams, a few microseconds per
request, so the client does not hide the server's cost) and `httpx` (any URL, TLS,
redirects). Every loop is bounded.

With a `retry` policy it behaves as a client that follows the retry contract
(kubeaccel_runtime.retry): a retried request counts once, with the latency the caller
saw, and is an error only when its last attempt failed.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np

from kubeaccel_runtime.client import (
    OIP_TO_NUMPY,
    AsyncInferenceClient,
    decode_response,
    encode_request,
)
from kubeaccel_runtime.rawhttp import RawConnection, raw_http_request
from kubeaccel_runtime.retry import RetryPolicy, retriable_error, retriable_status

Engine = Literal["raw", "httpx"]


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how hard, and for how long."""

    url: str  # base URL, e.g. http://127.0.0.1:8080
    model: str
    inputs: Mapping[str, np.ndarray[Any, Any]]
    binary: bool = True
    concurrency: int = 1
    requests: int | None = 1000
    duration_s: float | None = 10.0
    warmup: int = 20
    engine: Engine = "raw"
    timeout_s: float = 30.0
    # Send one request first and fail fast unless it is answered correctly (off: a
    # failed first request just counts like any other, e.g. while pods are disrupted).
    check_first: bool = True
    retry: RetryPolicy | None = None  # None: every failed attempt is an error


@dataclass(frozen=True)
class LoadResult:
    """Latency percentiles (ms) and throughput of one run."""

    requests: int
    errors: int
    elapsed_s: float
    rps: float
    items_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    statuses: dict[int, int] = field(default_factory=dict)
    retries: int = 0  # attempts sent again under the retry policy

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON reports)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "retries": self.retries,
            "elapsed_s": round(self.elapsed_s, 3),
            "rps": round(self.rps, 1),
            "items_per_s": round(self.items_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


class LoadError(RuntimeError):
    """The target did not answer the first request correctly."""


def summarize(
    latencies_s: list[float], statuses: Counter[int], elapsed: float, rows: int, retries: int = 0
) -> LoadResult:
    """Percentiles and rates from raw per-request latencies."""
    ok = statuses.get(200, 0)
    total = sum(statuses.values())
    lat = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if lat.size:
        p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
        mean = float(lat.mean())
    else:
        p50 = p90 = p99 = mean = float("nan")
    return LoadResult(
        requests=total,
        errors=total - ok,
        elapsed_s=elapsed,
        rps=ok / elapsed if elapsed > 0 else 0.0,
        items_per_s=ok * rows / elapsed if elapsed > 0 else 0.0,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        statuses=dict(statuses),
        retries=retries,
    )


class _Budget:
    """Shared stop condition: a request count and a deadline."""

    def __init__(self, requests: int | None, duration_s: float | None) -> None:
        self.left = requests
        self.deadline = time.perf_counter() + duration_s if duration_s else None

    def take(self) -> bool:
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def _rows(spec: LoadSpec) -> int:
    first = next(iter(spec.inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run one closed-loop load test and return its figures."""
    body, headers = encode_request(spec.inputs, binary=spec.binary, binary_outputs=spec.binary)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    if spec.engine == "raw":
        host, port, request = raw_http_request(spec.url, spec.model, body, headers)
        conns = [
            RawConnection(host, port, request, spec.timeout_s) for _ in range(spec.concurrency)
        ]

        async def call(i: int) -> tuple[int, dict[str, str], bytes]:
            return await conns[i].send()

        async def close() -> None:
            for c in conns:
                await c.close()
    else:
        client = AsyncInferenceClient(
            spec.url, timeout=spec.timeout_s, max_connections=spec.concurrency
        )

        async def call(i: int) -> tuple[int, dict[str, str], bytes]:
            r = await client.infer_raw(spec.model, body, headers)
            return r.status_code, dict(r.headers), r.content

        async def close() -> None:
            await client.aclose()

    try:
        if spec.check_first:
            status, resp_headers, resp_body = await call(0)
            if status != 200:
                raise LoadError(f"first request answered HTTP {status}: {resp_body[:300]!r}")
            decode_response(resp_body, resp_headers)

        async def attempt(i: int) -> tuple[int, BaseException | None]:
            try:
                code, _, _ = await call(i)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, httpx.HTTPError) as exc:
                if spec.engine == "raw":
                    await conns[i].close()
                return 0, exc
            return code, None

        warm = _Budget(spec.warmup, None)

        async def warmup(i: int) -> None:
            while warm.take():
                await attempt(i)

        await asyncio.gather(*(warmup(i) for i in range(spec.concurrency)))
        retried = 0

        async def send(i: int) -> int:
            nonlocal retried
            tries = 0
            while True:
                code, exc = await attempt(i)
                again = retriable_error(exc) if exc is not None else retriable_status(code)
                if spec.retry is None or not again or not spec.retry.allows(tries + 1):
                    return code
                tries += 1
                retried += 1
                await asyncio.sleep(spec.retry.delay(tries))

        async def worker(i: int) -> None:
            while budget.take():
                t0 = time.perf_counter()
                code = await send(i)
                latencies.append(time.perf_counter() - t0)
                statuses[code] += 1

        # The generator's own collector pauses would show up as server latency: no
        # collection during the (bounded) timed loop.
        gc.collect()
        gc.disable()
        # The clock starts now: a slow collection on a busy machine must not eat the run.
        budget = _Budget(spec.requests, spec.duration_s)
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
        await close()
    return summarize(latencies, statuses, elapsed, _rows(spec), retried)


def inputs_from_metadata(
    metadata: Mapping[str, Any], batch: int = 1, seed: int = 0
) -> dict[str, np.ndarray[Any, Any]]:
    """Random inputs matching a model's OIP metadata (dim 0 = `batch`, other dynamic dims = 1)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for item in metadata["inputs"]:
        dims = [int(d) for d in item["shape"]]
        shape = tuple(batch if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(dims))
        dtype = OIP_TO_NUMPY[item["datatype"]]
        if dtype.kind == "f":
            out[item["name"]] = rng.random(shape, dtype=np.float64).astype(dtype)
        elif dtype.kind == "b":
            out[item["name"]] = rng.random(shape) < 0.5
        else:
            out[item["name"]] = rng.integers(0, 2, size=shape).astype(dtype)
    return out


def run(spec: LoadSpec) -> LoadResult:
    """run_load on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_load(spec))
    return uvloop.run(run_load(spec))
