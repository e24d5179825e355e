"""Forward a shard's outputs to the next shard and bring back the model outputs.

Intermediate tensors always travel as binary data. Timeouts are bounded; what the retry
contract (kubeaccel_runtime.retry) allows is retried a few times with a short backoff:
connection failures, a keep-alive connection closed by a replica that is shutting down,
and 503s (inference is idempotent). Anything else surfaces at once as 502/503 with the
next shard's message.
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
import orjson

from kubeaccel_runtime.client import OipDecodeError, decode_response, encode_request
from kubeaccel_runtime.retry import RetryPolicy, retriable_error, retriable_status
from kubeaccel_runtime.serve.errors import DownstreamFailed, DownstreamUnavailable

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


class NextShard:
    """An httpx connection pool to the next shard, plus a cached view of its readiness."""

    def __init__(
        self,
        cfg: ChainConfig,
        model_name: str,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.model_name = model_name
        self._on_retry = on_retry
        timeout = httpx.Timeout(
            cfg.request_timeout_s, connect=cfg.connect_timeout_s, pool=cfg.request_timeout_s
        )
        self._http = httpx.AsyncClient(
            base_url=cfg.next_url.rstrip("/"),
            timeout=timeout,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._retry = RetryPolicy(retries=cfg.retries, backoff_s=cfg.backoff_s)
        self._ready: tuple[float, bool, str] = (0.0, False, "not checked yet")
        self._ready_lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

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
        path = f"/v2/models/{self.model_name}/infer"
        attempt = 0
        while True:
            try:
                response = await self._http.post(path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                if retriable_error(exc) and self._retry.allows(attempt + 1):
                    attempt += 1
                    await self._before_retry("transport", attempt)
                    continue
                raise self._transport_error(exc, attempt) from None
            if retriable_status(response.status_code) and self._retry.allows(attempt + 1):
                attempt += 1
                await self._before_retry(f"http_{response.status_code}", attempt)
                continue
            return self._decode(response)

    async def _before_retry(self, cause: str, attempt: int) -> None:
        if self._on_retry is not None:
            self._on_retry(cause)
        await asyncio.sleep(self._retry.delay(attempt))

    def _transport_error(
        self, exc: httpx.HTTPError, attempt: int
    ) -> DownstreamUnavailable | DownstreamFailed:
        """The error a caller gets when the next shard gave no answer."""
        if retriable_error(exc):
            return DownstreamUnavailable(
                f"next shard {self.cfg.next_url} unreachable after {attempt + 1} attempts: "
                f"{type(exc).__name__}",
                reason="unreachable",
            )
        if isinstance(exc, httpx.TimeoutException):
            return DownstreamUnavailable(
                f"next shard {self.cfg.next_url} did not answer within "
                f"{self.cfg.request_timeout_s:g} s",
                reason="timeout",
            )
        return DownstreamFailed(
            f"next shard {self.cfg.next_url} failed: {type(exc).__name__}: {exc}",
            reason="transport",
        )

    def _decode(self, response: httpx.Response) -> dict[str, Array]:
        status = response.status_code
        if status != 200:
            message = _error_message(response)
            cls = DownstreamUnavailable if status == 503 else DownstreamFailed
            raise cls(
                f"next shard {self.cfg.next_url} answered HTTP {status}: {message}",
                reason=f"http_{status // 100}xx",
            )
        try:
            return decode_response(response.content, response.headers).outputs
        except OipDecodeError as exc:
            raise DownstreamFailed(
                f"next shard {self.cfg.next_url} sent an unreadable response: {exc}",
                reason="decode",
            ) from None


def _error_message(response: httpx.Response) -> str:
    try:
        doc = orjson.loads(response.content)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])[:500]
    except orjson.JSONDecodeError:
        pass
    return response.text[:200] or "(empty body)"
