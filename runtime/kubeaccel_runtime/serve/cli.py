"""`kubeaccel serve`: serve one shard of an artifact over Open Inference Protocol v2.

The HTTP server starts at once (live, not ready) and the shard loads in a background
thread: digests first, then the onnxruntime session. If loading fails, readiness says
why and the process exits with status 1 after `--fail-exit-seconds`, so Kubernetes shows
a crash loop with a readable reason instead of a silent not-ready pod. The reason also
goes to the termination log (/dev/termination-log), where the operator reads it.

While serving, the artifact's digests are re-checked every `--verify-interval` seconds:
an artifact changed on the volume withdraws the model (503, not ready) and ends the
process the same way, so the restarted pod refuses it at load.
"""

from __future__ import annotations

import gc
import logging
import logging.config
import os
import sys
import threading
from pathlib import Path

import click
from kubeaccel_api.constants import RUNTIME_PORT
from kubeaccel_api.routing import Routing, RoutingMode
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec, ExecutionProvider
from pydantic import ValidationError

from kubeaccel_runtime.artifact_manifest import ArtifactInvalid, read_manifest
from kubeaccel_runtime.serve.app import ModelSlot, ServeSettings, create_app
from kubeaccel_runtime.serve.chain import ChainConfig
from kubeaccel_runtime.serve.integrity import IntegrityWatch
from kubeaccel_runtime.serve.logs import logging_config
from kubeaccel_runtime.serve.routing import RoutingSource
from kubeaccel_runtime.serve.server import ServerOptions, build_server
from kubeaccel_runtime.serve.session import LoadError, SessionConfig, load_shard
from kubeaccel_runtime.termination import write_termination_log

log = logging.getLogger("kubeaccel.serve")
SPEC_ENV = "KUBEACCEL_SPEC"
ROUTING_FILE_ENV = "KUBEACCEL_ROUTING_FILE"
CHAIN_ENV = "KUBEACCEL_CHAIN"


def resolve_spec(spec_file: Path | None, artifacts: Path) -> AcceleratedModelSpec | None:
    """The spec from --spec, else $KUBEACCEL_SPEC, else None (use the manifest's)."""
    if spec_file is not None:
        from kubeaccel_runtime.specfile import load_one

        return load_one(spec_file).spec
    raw = os.environ.get(SPEC_ENV)
    if raw:
        return AcceleratedModelSpec.model_validate_json(raw)
    try:
        return read_manifest(artifacts).parsed_spec()
    except (ArtifactInvalid, ValidationError):
        return None  # reported by the loader, which re-reads and verifies the artifact


def routing_source(
    shard: int,
    chain: str,
    routing_file: Path | None,
    candidate: str | None,
    mirror_percent: float | None,
    canary_percent: float | None,
) -> RoutingSource | None:
    """Where shard 0 takes its shadow/canary routing from; None when it never routes.

    Raises:
        ValueError: contradictory or incomplete routing options (the message says which).
    """
    fixed = candidate is not None or mirror_percent is not None or canary_percent is not None
    if not fixed and routing_file is None:
        return None
    if shard != 0:
        raise ValueError("routing (--routing-file, --candidate) applies to shard 0 only")
    if routing_file is not None:
        if fixed:
            raise ValueError(
                "--routing-file excludes --candidate/--mirror-percent/--canary-percent"
            )
        return RoutingSource(chain=chain, file=routing_file)
    if mirror_percent is not None and canary_percent is not None:
        raise ValueError("--mirror-percent and --canary-percent exclude each other")
    percent = mirror_percent if mirror_percent is not None else canary_percent
    if candidate is None or percent is None:
        raise ValueError(
            "--candidate needs --mirror-percent or --canary-percent, and they need --candidate"
        )
    mode = RoutingMode.SHADOW if mirror_percent is not None else RoutingMode.CANARY
    routing = Routing(id="cli", mode=mode, chain=chain, candidate_url=candidate, percent=percent)
    return RoutingSource(chain=chain, fixed=routing)


def settings_for(
    spec: AcceleratedModelSpec | None,
    next_url: str | None,
    workers: int,
    inline_run_ms: float = 0.3,
    routing: RoutingSource | None = None,
) -> ServeSettings:
    """Server settings from the spec's runtime/limits sections and the CLI flags."""
    chain = ChainConfig(next_url=next_url) if next_url else None
    if spec is None:
        return ServeSettings(
            chain=chain, run_workers=workers, inline_run_ms=inline_run_ms, routing=routing
        )
    batching = spec.runtime.batching
    return ServeSettings(
        batching=batching.enabled,
        max_batch_size=batching.max_batch_size,
        max_delay_ms=batching.max_delay_ms,
        chain=chain,
        run_workers=workers,
        inline_run_ms=inline_run_ms,
        max_request_bytes=spec.limits.max_request_bytes,
        routing=routing,
    )


@click.command("serve")
@click.option(
    "--artifacts",
    required=True,
    type=click.Path(path_type=Path),
    help="Artifact directory (<out>/<artifact-id>) holding manifest.json and the shards.",
)
@click.option(
    "--shard", default=0, show_default=True, type=click.IntRange(min=0), help="Shard index."
)
@click.option(
    "--next",
    "next_url",
    default=None,
    help="Base URL of the next shard, e.g. http://m-shard-1:8080.",
)
@click.option("--port", default=RUNTIME_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option(
    "--spec",
    "spec_file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"AcceleratedModel YAML/JSON (default: ${SPEC_ENV}, else the manifest's spec).",
)
@click.option(
    "--provider",
    type=click.Choice([p.value for p in ExecutionProvider]),
    default=None,
    help="Override spec.runtime.executionProvider.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="onnxruntime intra-op threads (default: the cgroup CPU limit).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Concurrent session calls.",
)
@click.option(
    "--inline-run-ms",
    type=click.FloatRange(min=0),
    default=0.3,
    show_default=True,
    help="Run session calls expected under this many ms on the event loop (0: always a thread).",
)
@click.option(
    "--drain-seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="Not-ready time before stopping on SIGTERM.",
)
@click.option(
    "--shutdown-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Longest wait for in-flight requests.",
)
@click.option(
    "--fail-exit-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="Exit 1 this long after a failed load.",
)
@click.option(
    "--routing-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=ROUTING_FILE_ENV,
    default=None,
    help="Shard 0: shadow/canary routing written by the operator (re-read when it changes).",
)
@click.option(
    "--chain",
    envvar=CHAIN_ENV,
    default="a",
    show_default=True,
    help="Chain this server belongs to; a routing file applies to its chain only.",
)
@click.option("--candidate", default=None, help="Shard 0: base URL of a candidate chain.")
@click.option(
    "--mirror-percent",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    help="Shadow: also send this share of requests to --candidate and compare the outputs.",
)
@click.option(
    "--canary-percent",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    help="Canary: let --candidate answer this share of requests.",
)
@click.option(
    "--verify-interval",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Re-check the artifact's digests this often while serving (0: only at start).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
def serve(
    artifacts: Path,
    shard: int,
    next_url: str | None,
    port: int,
    host: str,
    spec_file: Path | None,
    provider: str | None,
    threads: int | None,
    workers: int,
    inline_run_ms: float,
    drain_seconds: float,
    shutdown_timeout: float,
    fail_exit_seconds: float,
    routing_file: Path | None,
    chain: str,
    candidate: str | None,
    mirror_percent: float | None,
    canary_percent: float | None,
    verify_interval: float,
    log_level: str,
) -> None:
    """Serve shard SHARD of an artifact with the Open Inference Protocol v2."""
    logging.config.dictConfig(logging_config(log_level))
    try:
        routing = routing_source(
            shard, chain, routing_file, candidate, mirror_percent, canary_percent
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        spec = resolve_spec(spec_file, artifacts)
    except (ValueError, OSError) as exc:  # InvalidResource and ValidationError are ValueErrors
        click.echo(f"error: cannot read the spec: {exc}", err=True)
        sys.exit(1)
    try:
        name = read_manifest(artifacts).model_name
    except ArtifactInvalid:
        name = artifacts.name  # load fails below with the precise reason
    slot = ModelSlot(name)
    app = create_app(slot, settings_for(spec, next_url, workers, inline_run_ms, routing))
    server = build_server(
        app,
        ServerOptions(
            host=host,
            port=port,
            drain_seconds=drain_seconds,
            shutdown_timeout_s=shutdown_timeout,
            log_level=log_level,
        ),
    )
    session_cfg = SessionConfig(
        provider=ExecutionProvider(provider)
        if provider
        else (spec.runtime.execution_provider if spec else ExecutionProvider.AUTO),
        intra_op_threads=threads,
    )

    def give_up(message: str, reason: str) -> None:
        # Readiness says why at once; Kubernetes learns it from the exit and the log.
        write_termination_log({"error": f"shard {shard}: {message}", "reason": reason})
        server.stop_after(fail_exit_seconds, exit_code=1)

    def withdraw(problem: str) -> None:
        slot.withdraw(problem)
        give_up(problem, "ArtifactInvalid")

    def load() -> None:
        try:
            model = load_shard(
                artifacts, shard, spec=spec, forwarding=next_url is not None, config=session_cfg
            )
        except Exception as exc:  # the thread's boundary: any failure must end the process
            where = {"artifacts": str(artifacts), "shard": shard, "exit_in_s": fail_exit_seconds}
            if isinstance(exc, LoadError):
                log.error("cannot serve: %s", exc, extra=where)
            else:
                log.exception("cannot serve: unexpected %s", type(exc).__name__, extra=where)
            message = str(exc) or type(exc).__name__
            slot.fail(message)
            give_up(message, exc.reason if isinstance(exc, LoadError) else "LoadFailed")
            return
        if app.settings.batching and not model.batching_capable:
            log.warning("batching disabled: inputs/outputs lack a dynamic dimension 0")
        slot.set(model)
        if verify_interval > 0:
            IntegrityWatch(artifacts, verify_interval, withdraw).start()
        # Everything loaded so far lives for the whole process: keep it out of the
        # collector's full passes, which otherwise stall requests for milliseconds.
        gc.freeze()

    threading.Thread(target=load, name="load-shard", daemon=True).start()
    server.run()
    sys.exit(server.exit_code)
