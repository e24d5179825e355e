"""rawhttp.ConnectionPool: reuse, and a connection the server closed while idle."""

from __future__ import annotations

import asyncio

import pytest
from kubeaccel_runtime.rawhttp import ConnectionPool

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REQUEST = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"


async def _server(answers_per_connection: int) -> tuple[asyncio.Server, list[int]]:
    """Answers that many requests per connection, then closes it silently (idle timeout)."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        for _ in range(answers_per_connection):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


async def test_connections_are_reused() -> None:
    server, connections = await _server(answers_per_connection=5)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(f"http://127.0.0.1:{port}", timeout=5)
    for _ in range(5):
        assert (await pool.send(REQUEST))[0] == 200
    assert len(connections) == 1
    await pool.aclose()
    server.close()


async def test_a_connection_closed_while_idle_is_retried_on_a_fresh_one() -> None:
    server, connections = await _server(answers_per_connection=1)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(f"http://127.0.0.1:{port}", timeout=5)
    assert (await pool.send(REQUEST))[2] == b"ok"
    await asyncio.sleep(0.05)  # the server has closed it by now
    assert (await pool.send(REQUEST))[2] == b"ok"
    assert len(connections) == 2
    await pool.aclose()
    server.close()


async def test_an_unreachable_server_raises() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await ConnectionPool(f"http://127.0.0.1:{port}", timeout=5).send(REQUEST)


def test_only_plain_http_urls_are_pooled() -> None:
    with pytest.raises(ValueError, match="http://"):
        ConnectionPool("https://example:443", timeout=1)
