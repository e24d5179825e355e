"""Run the app under uvicorn with Kubernetes-friendly shutdown.

On SIGTERM the server first reports not-ready (so endpoints stop routing to it), keeps
serving for `drain_seconds`, then stops accepting and lets in-flight requests finish
(bounded by `shutdown_timeout_s`). A second signal exits at once.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from types import FrameType

import uvicorn

from kubeaccel_runtime.serve.app import ServeApp
from kubeaccel_runtime.serve.logs import logging_config

log = logging.getLogger("kubeaccel.serve")


@dataclass(frozen=True)
class ServerOptions:
    """Where to listen and how to shut down."""

    host: str = "0.0.0.0"
    port: int = 8080
    drain_seconds: float = 5.0
    shutdown_timeout_s: float = 30.0
    log_level: str = "info"


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT flips readiness, then stops after a delay."""

    def __init__(self, config: uvicorn.Config, app: ServeApp, drain_seconds: float) -> None:
        super().__init__(config)
        self.serve_app = app
        self.drain_seconds = drain_seconds
        self.exit_code = 0
        self._signalled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): uvicorn would re-raise the signal after a clean shutdown,
        # turning a graceful exit into "killed by SIGTERM".
        if self._signalled:
            self.force_exit = True
            self.should_exit = True
            return
        self._signalled = True
        log.info("signal received; draining", extra={"signal": sig, "drain_s": self.drain_seconds})
        self.serve_app.begin_drain()
        self.stop_after(self.drain_seconds)

    def stop_after(self, seconds: float, exit_code: int | None = None) -> None:
        """Ask the server to stop (gracefully) after `seconds`, optionally with an exit code."""

        def stop() -> None:
            if exit_code is not None:
                self.exit_code = exit_code
            self.should_exit = True

        timer = threading.Timer(seconds, stop)
        timer.daemon = True
        timer.start()


def build_server(app: ServeApp, opts: ServerOptions) -> DrainingServer:
    """A DrainingServer on the fastest available loop and HTTP parser."""
    has = importlib.util.find_spec
    config = uvicorn.Config(
        app,
        host=opts.host,
        port=opts.port,
        loop="uvloop" if has("uvloop") else "asyncio",
        http="httptools" if has("httptools") else "h11",
        lifespan="on",
        access_log=False,
        log_config=logging_config(opts.log_level),
        timeout_graceful_shutdown=int(opts.shutdown_timeout_s),
        server_header=False,
        date_header=False,
        # No X-Forwarded-* rewriting: the server never uses the client address, and the
        # middleware costs a coroutine per request.
        proxy_headers=False,
    )
    return DrainingServer(config, app, opts.drain_seconds)
