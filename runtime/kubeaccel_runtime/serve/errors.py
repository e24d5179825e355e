"""The server's error vocabulary and its single mapping to HTTP status codes.

Every failure a handler can meet is one of these; the app turns them into a JSON body
`{"error": "..."}` with the status from `HTTP_STATUS`. Anything else is a bug and becomes
a logged 500, which the property tests hunt for.
"""

from __future__ import annotations

from typing import Final

import orjson


class ServeError(Exception):
    """Base of every error the server answers deliberately."""

    def __init__(self, message: str, *, reason: str = "other") -> None:
        super().__init__(message)
        self.message = message
        # Short machine-readable cause, used as a metric label (bounded set of values).
        self.reason = reason


class InvalidRequest(ServeError):
    """The request breaks the protocol or the input contract (400)."""


class NotFound(ServeError):
    """Unknown path, model or version (404)."""


class MethodNotAllowed(ServeError):
    """Known path, wrong HTTP method (405)."""

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message, reason="method")
        self.allow = allow


class PayloadTooLarge(ServeError):
    """The body exceeds limits.maxRequestBytes (413)."""


class UnsupportedMediaType(ServeError):
    """A content encoding the server does not decode (415)."""


class OutputRejected(ServeError):
    """The model's output for this input breaks the output contract, e.g. NaN (422)."""


class NotReady(ServeError):
    """The model is not loaded yet, failed to load, or the server is shutting down (503)."""


class Overloaded(ServeError):
    """Too many requests waiting; retry later (503)."""


class DownstreamUnavailable(ServeError):
    """The next shard cannot be reached or is not ready (503)."""


class DownstreamFailed(ServeError):
    """The next shard answered with an error or an unreadable response (502)."""


class ContractViolation(ServeError):
    """The model produced an output that does not match its declared contract (500)."""


class InferenceFailed(ServeError):
    """onnxruntime failed on an input that passed validation (500)."""


HTTP_STATUS: Final[dict[type[ServeError], int]] = {
    InvalidRequest: 400,
    NotFound: 404,
    MethodNotAllowed: 405,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    OutputRejected: 422,
    NotReady: 503,
    Overloaded: 503,
    DownstreamUnavailable: 503,
    DownstreamFailed: 502,
    ContractViolation: 500,
    InferenceFailed: 500,
}


def status_of(error: ServeError) -> int:
    """HTTP status code of a ServeError (its nearest mapped class)."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def answer_error(body: bytes) -> str:
    """What another server's error answer says: its `{"error": ...}`, else the body's start."""
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])[:500]
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", errors="replace") or "(empty body)"
