"""Forward a shard's outputs to the next shard and bring back the model outputs.

Intermediate tensors always travel as binary data, over pooled raw keep-alive connections
(`kubeaccel_runtime.rawhttp`): httpx costs milliseconds of CPU per request on a small node,
which capped a 2-shard chain at about 0.07x of one server's throughput here.
Timeouts are bounded; what the retry contract (kubeaccel_runtime.retry) allows is retried a
few times with a short backoff: connection failures, a keep-alive connection closed by a
replica that is shutting down, and 503s (inference is idempotent). Anything else surfaces
at once as 502/503 with the next shard's message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from kubeaccel_runtime import rawhttp
from kubeaccel_runtime.client import OipDecodeError, decode_response, encode_request
from kubeaccel_runtime.retry import RetryPolicy, retriable_status
from kubeaccel_runtime.serve.errors import DownstreamFailed, DownstreamUnavailable, answer_error

log = logging.getLogger("kubeaccel.serve.chain")
Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class ChainConfig:
    """Where the next shard is and how long to wait for it."""

    next_url: str
    connect_timeout_s: float = 2.0
    request_timeout_s: float = 30.0
    retries: int = 2
    backoff_s: float = 0.05
    ready_cache_s: float = 1.0
    ready_timeout_s: float = 1.0


@dataclass(frozen=True)
class Answer:
    """The next shard's HTTP answer: status, lower-case headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


class NextShard:
    """Keep-alive connections to the next shard, plus a cached view of its readiness."""

    def __init__(
        self,
        cfg: ChainConfig,
        model_name: str,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.model_name = model_name
        self._on_retry = on_retry
        self._retry = RetryPolicy(retries=cfg.retries, backoff_s=cfg.backoff_s)
        timeout = httpx.Timeout(
            cfg.request_timeout_s, connect=cfg.connect_timeout_s, pool=cfg.request_timeout_s
        )
        # Readiness probes are rare (cached): httpx is fine there.
        self._http = httpx.AsyncClient(
            base_url=cfg.next_url.rstrip("/"),
            timeout=timeout,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )
        self._pool = rawhttp.ConnectionPool(cfg.next_url, cfg.request_timeout_s)
        self._ready: tuple[float, bool, str] = (0.0, False, "not checked yet")
        self._ready_lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()
        await self._pool.aclose()

    async def ready(self) -> tuple[bool, str]:
        """Whether the next shard reports the model ready (cached for `ready_cache_s`)."""
        async with self._ready_lock:
            checked, ok, why = self._ready
            if time.monotonic() - checked < self.cfg.ready_cache_s:
                return ok, why
            ok, why = await self._probe()
            self._ready = (time.monotonic(), ok, why)
            return ok, why

    async def _probe(self) -> tuple[bool, str]:
        url = f"/v2/models/{self.model_name}/ready"
        try:
            response = await self._http.get(url, timeout=self.cfg.ready_timeout_s)
        except httpx.HTTPError as exc:
            return False, f"next shard {self.cfg.next_url} unreachable: {type(exc).__name__}"
        if response.status_code == 200:
            return True, ""
        return False, f"next shard {self.cfg.next_url} not ready (HTTP {response.status_code})"

    async def infer(
        self, tensors: dict[str, Array], outputs: Sequence[str], request_id: str | None
    ) -> dict[str, Array]:
        """Run the rest of the pipeline on `tensors`; returns the requested model outputs."""
        body, headers = encode_request(
            tensors, binary=True, outputs=list(outputs), binary_outputs=True, request_id=request_id
        )
        _, _, request = rawhttp.raw_http_request(self.cfg.next_url, self.model_name, body, headers)
        attempt = 0
        while True:
            try:
                response = Answer(*await self._pool.send(request))
            except TimeoutError:  # the request may still run: never sent twice
                raise DownstreamUnavailable(
                    f"next shard {self.cfg.next_url} did not answer within "
                    f"{self.cfg.request_timeout_s:g} s",
                    reason="timeout",
                ) from None
            except (OSError, asyncio.IncompleteReadError) as exc:  # refused, reset, closed
                if self._retry.allows(attempt + 1):
                    attempt += 1
                    await self._before_retry("transport", attempt)
                    continue
                raise DownstreamUnavailable(
                    f"next shard {self.cfg.next_url} unreachable after {attempt + 1} attempts: "
                    f"{type(exc).__name__}",
                    reason="unreachable",
                ) from None
            except ValueError as exc:  # a malformed status line or header
                raise DownstreamFailed(
                    f"next shard {self.cfg.next_url} failed: {type(exc).__name__}: {exc}",
                    reason="transport",
                ) from None
            if retriable_status(response.status) and self._retry.allows(attempt + 1):
                attempt += 1
                await self._before_retry(f"http_{response.status}", attempt)
                continue
            return self._decode(response)

    async def _before_retry(self, cause: str, attempt: int) -> None:
        if self._on_retry is not None:
            self._on_retry(cause)
        await asyncio.sleep(self._retry.delay(attempt))

    def _decode(self, response: Answer) -> dict[str, Array]:
        status = response.status
        if status != 200:
            message = answer_error(response.body)
            cls = DownstreamUnavailable if status == 503 else DownstreamFailed
            raise cls(
                f"next shard {self.cfg.next_url} answered HTTP {status}: {message}",
                reason=f"http_{status // 100}xx",
            )
        try:
            return decode_response(response.body, response.headers).outputs
        except OipDecodeError as exc:
            raise DownstreamFailed(
                f"next shard {self.cfg.next_url} sent an unreadable response: {exc}",
                reason="decode",
            ) from None
