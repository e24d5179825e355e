"""`kubeaccel run`: the operator's job, on one machine — optimize, then serve every shard locally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypedDict

from kubeaccel_api.v1alpha1 import AcceleratedModel
from rich.console import Console

from kubeaccel_runtime import terminal
from kubeaccel_runtime.artifact_manifest import read_manifest
from kubeaccel_runtime.local.supervisor import Chain, ChainConfig, ShardFailed, plan_ports
from kubeaccel_runtime.optimize.pipeline import OptimizeResult

STATE_FILE = "run.json"


class RunState(TypedDict):
    """What a ready local run publishes in its state file."""

    pid: int
    endpoint: str
    artifact: str
    shardPids: list[int]


class RunError(RuntimeError):
    """A local run that cannot start or keep going; the message says why."""


@dataclass(frozen=True)
class RunPaths:
    """Where a local run keeps its files, under the work directory."""

    workdir: Path
    name: str

    @property
    def root(self) -> Path:
        return self.workdir / self.name

    @property
    def artifacts(self) -> Path:
        return self.workdir / "artifacts" / self.name

    @property
    def spec_file(self) -> Path:
        return self.root / "model.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE


def optimize(
    resource: AcceleratedModel, paths: RunPaths, *, force: bool, console: Console
) -> OptimizeResult:
    """Run the optimization Job's code path in-process, with the same Rich progress."""
    from kubeaccel_runtime.optimize.cli import RichProgress
    from kubeaccel_runtime.optimize.pipeline import run_optimization

    progress = RichProgress(console)
    try:
        return run_optimization(resource, paths.artifacts, force=force, progress=progress)
    finally:
        progress.close()


def write_spec(resource: AcceleratedModel, paths: RunPaths) -> None:
    """Hand the shards the spec the same way the operator does: one JSON document."""
    paths.root.mkdir(parents=True, exist_ok=True)
    wire = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    paths.spec_file.write_text(json.dumps(wire, indent=2))


class _Stop(Exception):
    """Raised from the signal handler to leave the serve loop."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve_foreground(
    resource: AcceleratedModel,
    artifact: Path,
    paths: RunPaths,
    *,
    port: int | None,
    ready_timeout: float,
    console: Console,
) -> int:
    """Start the chain, wait until ready, serve until a signal; stop every child on the way out."""
    shards = len(read_manifest(artifact).shards)
    cfg = ChainConfig(
        artifact_dir=artifact,
        spec_file=paths.spec_file,
        shards=shards,
        ports=plan_ports(shards, port),
        log_dir=paths.logs,
        # Shards share this machine's cores: split them rather than oversubscribe.
        threads=max(1, (os.cpu_count() or 1) // shards),
    )
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    chain = Chain(cfg)
    try:
        chain.start()
        with terminal.status(console, f"starting {shards} shard(s)…"):
            chain.wait_ready(ready_timeout)
        endpoint = f"{chain.endpoint}/v2/models/{resource.metadata.name}"
        state: RunState = {
            "pid": os.getpid(),
            "endpoint": endpoint,
            "artifact": str(artifact),
            "shardPids": chain.pids(),
        }
        # Written atomically: a detached parent polls for this file.
        tmp = paths.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(paths.state)
        terminal.say(console, terminal.READY, f": {endpoint}  (shards on ports {cfg.ports})")
        while True:
            chain.check_alive()
            time.sleep(0.5)
    except _Stop as stop:
        terminal.say(console, f"{stop}: stopping {shards} shard(s)")
        return 0
    except ShardFailed as exc:
        terminal.say(console, terminal.ERROR, f": {exc}")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        chain.stop()
        paths.state.unlink(missing_ok=True)


def start_detached(
    spec_path: Path, paths: RunPaths, *, port: int | None, ready_timeout: float
) -> RunState:
    """Re-run `kubeaccel run` in the background as a supervisor; wait until it is ready."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.state.unlink(missing_ok=True)
    log = paths.root / "supervisor.log"
    cmd = [
        sys.executable, "-m", "kubeaccel_runtime.cli", "run", "-f", str(spec_path),
        "--workdir", str(paths.workdir), "--ready-timeout", str(ready_timeout),
    ]  # fmt: skip
    if port is not None:
        cmd += ["--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + ready_timeout + 30
    while time.monotonic() < deadline:
        if paths.state.exists():
            return read_state(paths)
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RunError(f"the local run exited with code {proc.returncode}:\n{tail}")
        time.sleep(0.2)
    proc.terminate()
    raise RunError(f"the local run was not ready after {ready_timeout:.0f} s (log: {log})")


def read_state(paths: RunPaths) -> RunState:
    """The state a running local run published (pid, endpoint, artifact, shard pids)."""
    try:
        state: RunState = json.loads(paths.state.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"no running local run under {paths.root}: {exc}") from None
    return state


def stop_detached(paths: RunPaths, timeout: float = 30.0) -> bool:
    """SIGTERM a detached run's supervisor and wait for it (and its shards) to go."""
    if not paths.state.exists():
        return False
    state = read_state(paths)
    pids = [state["pid"], *state["shardPids"]]
    try:
        os.kill(pids[0], signal.SIGTERM)
    except ProcessLookupError:
        paths.state.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:  # the supervisor never ignored SIGTERM before; be certain all the same
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    paths.state.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for our purposes.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return status != "Z"
