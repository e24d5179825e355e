"""Click commands for local runs: `kubeaccel run` and `kubeaccel stop`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from kubeaccel_api.validation import InvalidResource
from rich.console import Console

from kubeaccel_runtime import terminal
from kubeaccel_runtime.local.run import (
    RunError,
    RunPaths,
    optimize,
    serve_foreground,
    start_detached,
    stop_detached,
    write_spec,
)
from kubeaccel_runtime.local.supervisor import PortInUse, plan_ports
from kubeaccel_runtime.optimize.cli import print_report
from kubeaccel_runtime.optimize.errors import OptimizeError
from kubeaccel_runtime.specfile import load_one

WORKDIR = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".kubeaccel"),
    show_default=True,
    help="Where artifacts, logs and run state are kept.",
)


def spec_from_model(model: str, workdir: Path, err: Console) -> Path:
    """`kubeaccel init` in memory for MODEL, written under the work directory for reuse."""
    from kubeaccel_runtime.init.cli import InitRequest, draft_for_model
    from kubeaccel_runtime.init.probe import InitError

    try:
        drafted = draft_for_model(InitRequest(model=model), cwd=Path.cwd())
    except InitError as exc:
        terminal.say(err, terminal.FAIL, f" {exc}")
        sys.exit(1)
    path = RunPaths(workdir.resolve(), drafted.draft.name).root / "init.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(drafted.yaml(str(path)))
    terminal.say(err, f"spec (kubeaccel init {model}): {path}")
    return path


@click.command()
@click.argument("model", required=False)
@click.option(
    "-f",
    "--filename",
    "spec_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="AcceleratedModel YAML.",
)
@WORKDIR
@click.option("--port", type=int, default=None, help="Port of shard 0 (default: a free one).")
@click.option("--detach", is_flag=True, help="Start in the background and return when ready.")
@click.option("--force", is_flag=True, help="Re-optimize even if the artifact exists.")
@click.option("--ready-timeout", type=float, default=120.0, show_default=True, help="Seconds.")
def run(
    model: str | None,
    spec_path: Path | None,
    workdir: Path,
    port: int | None,
    detach: bool,
    force: bool,
    ready_timeout: float,
) -> None:
    """Optimize a model and serve every shard locally, chained on loopback.

    Give an AcceleratedModel with -f, or just a MODEL file: its spec is then written as
    `kubeaccel init MODEL` would (under the work directory) and used.
    """
    console, err = terminal.console(), terminal.console(stderr=True)
    if model is not None and spec_path is None:
        spec_path = spec_from_model(model, workdir, err)
    elif spec_path is None or model is not None:
        raise click.UsageError("give either MODEL or -f SPEC (exactly one)")
    try:
        resource = load_one(spec_path)
    except InvalidResource as exc:
        for line in exc.problems:
            terminal.say(err, terminal.FAIL, f" {line}")
        sys.exit(1)
    paths = RunPaths(workdir.resolve(), resource.metadata.name)
    try:
        if port is not None:
            plan_ports(1, port)  # fail before optimizing if the port is taken
        result = optimize(resource, paths, force=force, console=console)
        artifact = result.path
        write_spec(resource, paths)
        reused = " (reused: same source and optimization)" if result.reused else ""
        terminal.say(console, f"artifact: {artifact}{reused}")
        print_report(console, result.report, candidates=False)
        if detach:
            state = start_detached(spec_path, paths, port=port, ready_timeout=ready_timeout)
            terminal.say(console, terminal.READY, f": {state['endpoint']}")
            terminal.say(
                console,
                f"stop it with: kubeaccel stop {resource.metadata.name} --workdir {workdir}",
            )
            return
        code = serve_foreground(
            resource, artifact, paths, port=port, ready_timeout=ready_timeout, console=console
        )
    except (RunError, PortInUse, OptimizeError) as exc:
        terminal.say(err, terminal.ERROR, f": {exc}")
        sys.exit(1)
    sys.exit(code)


@click.command()
@click.argument("name")
@WORKDIR
def stop(name: str, workdir: Path) -> None:
    """Stop a detached local run and every shard it started."""
    if stop_detached(RunPaths(workdir.resolve(), name)):
        click.echo(f"stopped {name}")
    else:
        click.echo(f"no running local run named {name} under {workdir}", err=True)
        sys.exit(1)
