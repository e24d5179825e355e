"""A TCP forwarder in front of a test server, to play network faults on real sockets.

- `drops=N`: the first N connections read the request, then close (`reset=True`: with an
  RST), as a replica that dies mid-request behind its Service;
- `down()` / `up()`: an outage, as an API server that stops: every open connection is cut,
  new ones are accepted and closed at once (`refused` counts them) until `up()`.

Everything else is forwarded byte for byte, each direction in its own thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpFront:
    """Forward 127.0.0.1:<port> to `target` ("http://host:port"), with faults on demand."""

    def __init__(self, target: str, *, drops: int = 0, reset: bool = False) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.drops = drops
        self.reset = reset
        self.refused = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._down = threading.Event()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="tcp-front", daemon=True)

    def __enter__(self) -> TcpFront:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._cut()
        self.sock.close()

    def down(self) -> None:
        """Start an outage: cut every connection, turn new ones away."""
        self._down.set()
        self._cut()

    def up(self) -> None:
        """End the outage."""
        self._down.clear()

    def _cut(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            _close(conn)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            if self._down.is_set():
                self.refused += 1
                client.close()
            elif self.drops > 0:
                self.drops -= 1
                client.recv(65536)
                if self.reset:  # RST instead of FIN
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                client.close()
            else:
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._down.is_set():  # the outage began while this one was connecting
                self.refused += 1
                client.close()
                upstream.close()
                return
            self._open.update((client, upstream))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (src, dst):
                _close(conn)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)


def _close(conn: socket.socket) -> None:
    # shutdown() wakes a recv() blocked in another thread; close() alone would not.
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()
