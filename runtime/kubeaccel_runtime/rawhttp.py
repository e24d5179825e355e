"""Keep-alive HTTP/1.1 over plain asyncio streams, for one fixed kind of request.

A few microseconds per request where httpx spends over a millisecond of CPU (measured:
1.6-2.0 ms vs 0.22-0.35 ms per infer round trip including encode/decode), which matters
where the caller must not hide or add the cost: the load generator, and a serving shard
mirroring live requests to a candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from urllib.parse import urlsplit


class RawConnection:
    """One keep-alive HTTP/1.1 connection sending one fixed request."""

    def __init__(self, host: str, port: int, request: bytes, timeout: float) -> None:
        self.host, self.port, self.request, self.timeout = host, port, request, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self) -> tuple[int, dict[str, str], bytes]:
        """Send `request` and read the answer: status, lower-case headers, body."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), self.timeout
            )
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await asyncio.wait_for(self._chunked(), self.timeout)
        else:
            body = await asyncio.wait_for(self.reader.read(), self.timeout)
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def raw_http_request(
    url: str, model: str, body: bytes, headers: Mapping[str, str]
) -> tuple[str, int, bytes]:
    """(host, port, bytes) of a complete HTTP/1.1 keep-alive infer request for `model`."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the raw engine needs an http:// URL, got {url!r}")
    port = parts.port or 80
    path = f"{parts.path.rstrip('/')}/v2/models/{model}/infer"
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.hostname}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return parts.hostname, port, "\r\n".join(lines).encode() + body


class ConnectionPool:
    """Idle keep-alive connections to one server, reused request after request.

    A connection the server closed while it sat idle (keep-alive timeout) fails on reuse
    before any answer arrives; that request is retried once on a fresh connection, so an
    idle timeout is never reported as the server's failure.
    """

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"a connection pool needs an http:// URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self._idle: list[RawConnection] = []

    async def send(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request (complete HTTP/1.1 bytes) and its answer.

        Raises:
            OSError (TimeoutError included), asyncio.IncompleteReadError, ValueError: no
            usable answer.
        """
        if self._idle:
            try:
                return await self._exchange(self._idle.pop(), request)
            except TimeoutError:
                raise
            except (OSError, asyncio.IncompleteReadError, ValueError):
                pass  # closed while idle: retried once on a fresh connection
        return await self._exchange(RawConnection(self.host, self.port, b"", 0.0), request)

    async def _exchange(
        self, conn: RawConnection, request: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        conn.request, conn.timeout = request, self.timeout
        try:
            answer = await asyncio.wait_for(conn.send(), self.timeout)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            await conn.close()
            raise
        if conn.writer is not None:
            self._idle.append(conn)
        return answer

    async def aclose(self) -> None:
        """Close every idle connection."""
        while self._idle:
            await self._idle.pop().close()
