"""The retry contract of the inference API: what a caller may send again, how often, how fast.

Inference is idempotent (the same inputs give the same outputs and change nothing), so a
request that got no answer can be sent again. A caller retries:

- transport failures that happen before an answer: connection refused or reset, a
  keep-alive connection the server closed, a connect timeout (a replica that went away
  behind its Service, a shard restarting);
- HTTP 503: not ready, shutting down (draining), overloaded, or the next shard
  unavailable.

It never retries a 4xx (the request is wrong and stays wrong), a 500/502 (the same input
fails the same way) or a read timeout (the request may still be running; sending it again
doubles the load exactly when the server is slow).

Shard i uses this policy towards shard i+1; `loadgen` (bench, soak) uses it as a client
does. docs/kubernetes.md states the contract for users.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import httpx

RETRY_STATUSES: Final = frozenset({503})


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `retries` more attempts, waiting backoff_s, 2*backoff_s, 4*backoff_s, ..."""

    retries: int = 3
    backoff_s: float = 0.1

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        return float(self.backoff_s * 2 ** (attempt - 1))

    def allows(self, attempt: int) -> bool:
        """Whether retry number `attempt` (1-based) may be made."""
        return attempt <= self.retries


# What callers are told to do (docs/kubernetes.md): 3 retries after 0.1, 0.2 and 0.4 s.
CLIENT_POLICY: Final = RetryPolicy()


def retriable_status(status: int) -> bool:
    """Whether an answer with this HTTP status may be retried."""
    return status in RETRY_STATUSES


def retriable_error(exc: BaseException) -> bool:
    """Whether a transport failure (no answer) may be retried: not a read or pool timeout."""
    if isinstance(exc, httpx.ConnectTimeout):
        return True
    if isinstance(exc, httpx.TimeoutException):
        return False
    # IncompleteReadError: the server closed a keep-alive connection before answering.
    retriable = (
        httpx.NetworkError,
        httpx.RemoteProtocolError,
        ConnectionError,
        asyncio.IncompleteReadError,
    )
    return isinstance(exc, retriable)
