"""Start every shard of an artifact as a local `kubeaccel serve` process, chained on loopback.

The supervisor owns its children: it stops all of them on exit, on a signal, or as soon as
one of them dies (reporting which shard and the tail of its log), so a local run never
leaves orphans. Children also get PR_SET_PDEATHSIG, so even a SIGKILLed supervisor takes
its shards with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class ShardFailed(RuntimeError):
    """A shard process exited or never became ready."""


class PortInUse(RuntimeError):
    """The requested port is taken."""


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether `host:port` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports the kernel reports free (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def plan_ports(shards: int, first_port: int | None, host: str = LOOPBACK) -> list[int]:
    """Ports for every shard: shard 0 on `first_port` if given (checked), the rest free ones."""
    if first_port is None:
        return free_ports(shards, host)
    if not port_is_free(first_port, host):
        raise PortInUse(f"port {first_port} on {host} is already in use; pick another with --port")
    rest = [p for p in free_ports(shards, host) if p != first_port][: shards - 1]
    return [first_port, *rest]


def _die_with_parent() -> None:
    """preexec hook: the kernel SIGTERMs the child when the supervisor dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the supervisor's own cleanup still applies
        pass


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ShardProcess:
    """One running shard."""

    index: int
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the shard wrote."""
        self.log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ChainConfig:
    """What the supervisor needs to start a chain."""

    artifact_dir: Path
    spec_file: Path
    shards: int
    ports: list[int]
    log_dir: Path
    host: str = LOOPBACK
    threads: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)


def serve_command(cfg: ChainConfig, index: int) -> list[str]:
    """The `kubeaccel serve` command line of shard `index` (pure)."""
    cmd = [
        sys.executable, "-m", "kubeaccel_runtime.cli", "serve",
        "--artifacts", str(cfg.artifact_dir),
        "--shard", str(index),
        "--port", str(cfg.ports[index]),
        "--host", cfg.host,
        "--spec", str(cfg.spec_file),
        "--threads", str(cfg.threads),
        # Locally nothing routes by readiness: report a failed load and stop quickly.
        "--fail-exit-seconds", "1",
        "--drain-seconds", "0.2",
    ]  # fmt: skip
    if index + 1 < cfg.shards:
        cmd += ["--next", f"http://{LOOPBACK}:{cfg.ports[index + 1]}"]
    return cmd


class Chain:
    """A running pipeline of shard processes; use as a context manager."""

    def __init__(self, cfg: ChainConfig) -> None:
        self.cfg = cfg
        self.shards: list[ShardProcess] = []

    def __enter__(self) -> Chain:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.cfg.ports[0]}"

    def start(self) -> None:
        """Spawn every shard (the last first, so each one's downstream starts early)."""
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.cfg.extra_env}
        for index in reversed(range(self.cfg.shards)):
            log_path = self.cfg.log_dir / f"shard-{index}.log"
            log_file = log_path.open("wb")
            proc = subprocess.Popen(
                serve_command(self.cfg, index),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,
            )
            self.shards.append(ShardProcess(index, self.cfg.ports[index], proc, log_path, log_file))
        self.shards.sort(key=lambda s: s.index)

    def check_alive(self) -> None:
        """Raise ShardFailed naming the first shard that has exited."""
        for shard in self.shards:
            code = shard.process.poll()
            if code is not None:
                raise ShardFailed(
                    f"shard {shard.index} (port {shard.port}) exited with code {code}; "
                    f"last log lines ({shard.log_path}):\n{shard.log_tail()}"
                )

    def wait_ready(self, timeout: float, on_tick: Callable[[], None] | None = None) -> None:
        """Block until shard 0 (hence the whole chain) is ready; raise ShardFailed otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if http_ok(f"{self.endpoint}/v2/health/ready"):
                return
            if on_tick:
                on_tick()
            time.sleep(0.2)
        not_ready = [
            s.index for s in self.shards if not http_ok(f"{s.url}/v2/health/ready", timeout=0.5)
        ]
        raise ShardFailed(
            f"shards {not_ready} not ready after {timeout:.0f} s; last log lines of shard "
            f"{not_ready[-1] if not_ready else 0}:\n"
            f"{self.shards[not_ready[-1] if not_ready else 0].log_tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every shard (they drain), then SIGKILL what is left after `grace` seconds."""
        for shard in self.shards:
            if shard.process.poll() is None:
                shard.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for shard in self.shards:
            try:
                shard.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                shard.process.kill()
                shard.process.wait()
            shard.log_file.close()

    def pids(self) -> list[int]:
        """Process ids of every shard."""
        return [s.process.pid for s in self.shards]
