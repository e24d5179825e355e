"""Shadow and canary routing on shard 0 of the serving chain.

The operator describes what shard 0 must do in a routing file (kubeaccel_api.routing):
mirror a share of live requests to a candidate chain and compare its outputs with the
answer given to the client (shadow), or let the candidate answer a share of them (canary).
`Router` applies it and counts what happened; `GET /v2/rollout` reports the counters.

Rules that keep clients safe: a mirrored request runs after the client's answer is
computed, in a task of its own, bounded in number (beyond the bound it is skipped, never
queued); a candidate that fails a canary request is counted and the serving chain answers
instead. Nothing here can turn into a client-visible error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kubeaccel_api.routing import (
    LATENCY_BOUNDS_MS,
    ChainCounters,
    OutputCounters,
    Routing,
    RoutingMode,
    RoutingReport,
    ShadowCounters,
    add_output,
    bucket_index,
)
from pydantic import ValidationError

from kubeaccel_runtime.client import OipDecodeError, decode_response, encode_request
from kubeaccel_runtime.divergence import is_class_scores, output_divergence, top1
from kubeaccel_runtime.rawhttp import ConnectionPool, raw_http_request
from kubeaccel_runtime.serve.errors import (
    DownstreamFailed,
    DownstreamUnavailable,
    ServeError,
    answer_error,
)

log = logging.getLogger("kubeaccel.serve.routing")
Array = np.ndarray[Any, Any]

REFRESH_S = 1.0
MAX_MIRRORS = 64
CANDIDATE_TIMEOUT_S = 10.0
# Headers a canary forward passes on (the body is sent exactly as the client sent it).
FORWARDED = ("content-type", "inference-header-content-length")


class Sampler:
    """Picks `percent` % of calls, evenly spread (deterministic: 10 % is every 10th)."""

    def __init__(self, percent: float = 0.0) -> None:
        self.percent = percent
        self._acc = 0.0

    def take(self) -> bool:
        """Whether this call is in the share."""
        if self.percent <= 0:
            return False
        self._acc += self.percent
        if self._acc >= 100.0:
            self._acc -= 100.0
            return True
        return False


@dataclass
class ChainStats:
    """Requests one chain handled: count, failures, latency histogram."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    def record(self, ok: bool, seconds: float) -> None:
        """Count one request and its latency."""
        self.requests += 1
        self.errors += not ok
        self.buckets[bucket_index(seconds * 1000.0)] += 1

    def counters(self) -> ChainCounters:
        """The wire form."""
        return ChainCounters(
            requests=self.requests, errors=self.errors, latency_buckets=list(self.buckets)
        )


@dataclass
class ShadowStats:
    """Mirrored requests and how the candidate's outputs compare with the served ones."""

    mirrored: int = 0
    compared: int = 0
    errors: int = 0
    skipped: int = 0
    top1_compared: int = 0
    top1_agreed: int = 0
    outputs: dict[str, OutputCounters] = field(default_factory=dict)

    def compare(
        self,
        served: Mapping[str, Array],
        candidate: Mapping[str, Array],
        names: Sequence[str],
        top1_output: str | None,
    ) -> str | None:
        """Add one comparison; returns why it could not be made (counted as an error)."""
        for name in names:
            got = candidate.get(name)
            if got is None:
                return f"the candidate returned no output {name!r}"
            if got.shape != served[name].shape:
                return (
                    f"output {name!r}: candidate shape {list(got.shape)}, "
                    f"serving shape {list(served[name].shape)}"
                )
        for name in names:
            div = output_divergence(served[name], candidate[name])
            counters = OutputCounters(
                max_abs_diff=div.max_abs,
                abs_diff_sum=div.abs_diff_sum,
                abs_ref_sum=div.abs_ref_sum,
                non_finite=div.non_finite,
            )
            old = self.outputs.get(name)
            self.outputs[name] = counters if old is None else add_output(old, counters)
        if (
            top1_output is not None
            and top1_output in names
            and is_class_scores(served[top1_output])
        ):
            agree = top1(served[top1_output]) == top1(candidate[top1_output])
            self.top1_compared += int(agree.size)
            self.top1_agreed += int(agree.sum())
        self.compared += 1
        return None

    def counters(self) -> ShadowCounters:
        """The wire form."""
        return ShadowCounters(
            mirrored=self.mirrored,
            compared=self.compared,
            errors=self.errors,
            skipped=self.skipped,
            top1_compared=self.top1_compared,
            top1_agreed=self.top1_agreed,
            outputs=dict(self.outputs),
        )


class Candidate:
    """The candidate chain's shard 0, over pooled raw keep-alive connections.

    Raw asyncio streams, not httpx: a mirrored request must cost the serving process as
    little as possible (httpx spends 1.6-2 ms of CPU per request here, docs/benchmarks.md).
    """

    def __init__(self, url: str, model_name: str, timeout: float = CANDIDATE_TIMEOUT_S) -> None:
        self.url = url
        self.model_name = model_name
        self._pool = ConnectionPool(url, timeout)

    async def post(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """One infer request as given; (status, lower-case headers, body).

        Raises:
            DownstreamUnavailable: no answer (connection refused, reset, timeout).
        """
        _, _, request = raw_http_request(self.url, self.model_name, body, headers)
        try:
            return await self._pool.send(request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise DownstreamUnavailable(
                f"candidate {self.url} gave no answer: {type(exc).__name__}",
                reason="unreachable",
            ) from None

    async def infer(
        self, inputs: Mapping[str, Array], names: Sequence[str], request_id: str | None
    ) -> dict[str, Array]:
        """The candidate's outputs `names` for `inputs` (binary both ways)."""
        body, headers = encode_request(
            inputs, binary=True, outputs=list(names), binary_outputs=True, request_id=request_id
        )
        status, answer_headers, answer = await self.post(body, headers)
        if status != 200:
            raise DownstreamFailed(
                f"candidate answered HTTP {status}: {answer_error(answer)}", reason="candidate"
            )
        try:
            return decode_response(answer, answer_headers).outputs
        except OipDecodeError as exc:
            raise DownstreamFailed(
                f"unreadable candidate answer: {exc}", reason="candidate"
            ) from None

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._pool.aclose()


@dataclass(frozen=True)
class RoutingSource:
    """Where the routing comes from: a fixed one (flags), or a file the operator updates."""

    chain: str = "a"
    fixed: Routing | None = None
    file: Path | None = None


def read_routing(path: Path) -> Routing:
    """Parse a routing file; a missing or empty file means no routing.

    Raises:
        ValueError: the file is not a valid Routing document (the message says why).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Routing()
    if not raw.strip():
        return Routing()
    try:
        return Routing.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise ValueError(f"routing file {path}: {' '.join(first[:3])[:300]}") from None


class Router:
    """Applies the routing in force to one server and counts what it does."""

    def __init__(self, source: RoutingSource, model_name: str, top1_output: str | None) -> None:
        self.source = source
        self.model_name = model_name
        self.top1_output = top1_output
        self.routing = Routing(chain=source.chain)
        self.problem: str | None = None
        self.shadow = ShadowStats()
        self.serving = ChainStats()
        self.candidate = ChainStats()
        self._sampler = Sampler()
        self._client: Candidate | None = None
        self._stale: list[Candidate] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._checked = 0.0
        self._file_key: tuple[int, int, int] | None = None
        if source.fixed is not None:
            self._apply(source.fixed)

    # ----------------------------------------------------------------- routing in force

    @property
    def active(self) -> bool:
        """Whether this server mirrors or routes anything now."""
        return self.routing.mode is not RoutingMode.OFF and self.routing.chain == self.source.chain

    def refresh(self, now: float | None = None) -> None:
        """Re-read the routing file when it changed (checked at most every REFRESH_S)."""
        path = self.source.file
        if path is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._checked < REFRESH_S:
            return
        self._checked = now
        try:
            st = os.stat(path)
            key: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            key = None
        if key == self._file_key:
            return
        self._file_key = key
        try:
            routing = read_routing(path)
        except ValueError as exc:
            # Keep what was in force: a bad edit must not silently stop a rollout's counting.
            if self.problem != str(exc):
                log.error("cannot apply the routing file: %s", exc)
            self.problem = str(exc)
            return
        self.problem = None
        self._apply(routing)

    def _apply(self, routing: Routing) -> None:
        old = self.routing
        if routing.id != old.id:
            self.shadow, self.serving, self.candidate = ShadowStats(), ChainStats(), ChainStats()
        # A new rollout gets new connections too: the same URL (the same chain's shard 0
        # Service) then names another Service, its pods replaced, and a pooled connection
        # of the last rollout would still reach what served there.
        renewed = routing.candidate_url != old.candidate_url or routing.id != old.id
        if renewed or self._client is None:
            if self._client is not None:
                self._stale.append(self._client)
            self._client = None
            if routing.candidate_url is not None:
                self._client = Candidate(routing.candidate_url, self.model_name)
        self._sampler = Sampler(routing.percent if routing.chain == self.source.chain else 0.0)
        self.routing = routing
        if routing != old:
            log.info(
                "routing: %s %.4g%% to %s (id %s)",
                routing.mode.value,
                routing.percent,
                routing.candidate_url,
                routing.id,
                extra={"chain": self.source.chain},
            )

    # ----------------------------------------------------------------- canary

    def take_canary(self) -> bool:
        """Whether the candidate answers this request."""
        return self.active and self.routing.mode is RoutingMode.CANARY and self._sampler.take()

    async def forward(
        self, body: bytes, headers: Mapping[bytes, bytes], started: float
    ) -> tuple[bytes, dict[str, str]] | None:
        """The candidate's answer to the client's request as sent, or None when it failed."""
        client = self._client
        if client is None:
            return None
        sent = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in headers.items()
            if k.decode("latin-1") in FORWARDED
        }
        try:
            status, answer_headers, answer = await client.post(body, sent)
        except ServeError as exc:
            self.candidate.record(False, time.perf_counter() - started)
            log.warning("canary request failed: %s", exc.message)
            return None
        ok = status == 200
        self.candidate.record(ok, time.perf_counter() - started)
        if not ok:
            log.warning("canary request answered HTTP %d: %s", status, answer_error(answer))
            return None
        out = {k: v for k in FORWARDED if (v := answer_headers.get(k)) is not None}
        out.setdefault("content-type", "application/json")
        return answer, out

    def record_serving(self, ok: bool, started: float) -> None:
        """Count a request the serving chain answered (ok: not a server error)."""
        if self.active:
            self.serving.record(ok, time.perf_counter() - started)

    # ----------------------------------------------------------------- shadow

    def take_mirror(self) -> bool:
        """Whether this request is also sent to the candidate."""
        return self.active and self.routing.mode is RoutingMode.SHADOW and self._sampler.take()

    def mirror(
        self,
        inputs: Mapping[str, Array],
        names: Sequence[str],
        served: Mapping[str, Array],
        request_id: str | None,
    ) -> None:
        """Send the request to the candidate in the background and compare its answer."""
        client = self._client
        if client is None:
            return
        if len(self._tasks) >= MAX_MIRRORS:
            self.shadow.skipped += 1
            return
        self.shadow.mirrored += 1
        task = asyncio.get_running_loop().create_task(
            self._mirror(client, self.shadow, dict(inputs), list(names), served, request_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror(
        self,
        client: Candidate,
        stats: ShadowStats,
        inputs: dict[str, Array],
        names: list[str],
        served: Mapping[str, Array],
        request_id: str | None,
    ) -> None:
        started = time.perf_counter()
        try:
            got = await client.infer(inputs, names, request_id)
        except ServeError as exc:
            stats.errors += 1
            self.candidate.record(False, time.perf_counter() - started)
            log.warning("mirrored request failed: %s", exc.message)
            return
        self.candidate.record(True, time.perf_counter() - started)
        problem = stats.compare(served, got, names, self.top1_output)
        if problem is not None:
            stats.errors += 1
            log.warning("mirrored request not comparable: %s", problem)

    # ----------------------------------------------------------------- report, shutdown

    def report(self) -> RoutingReport:
        """What this server measured since it applied the routing in force."""
        self.refresh()
        return RoutingReport(
            id=self.routing.id,
            mode=self.routing.mode if self.active else RoutingMode.OFF,
            chain=self.source.chain,
            percent=self.routing.percent if self.active else 0.0,
            problem=self.problem,
            shadow=self.shadow.counters(),
            serving=self.serving.counters(),
            candidate=self.candidate.counters(),
        )

    async def aclose(self) -> None:
        """Let mirrors in flight finish (bounded by their timeout), close the clients."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CANDIDATE_TIMEOUT_S)
        for client in [*self._stale, *([self._client] if self._client else [])]:
            await client.aclose()
        self._stale.clear()
