"""`kubeaccel`: the user CLI (crd, validate, version, and the optimize/serve/run tools).

Subcommands are imported lazily, so `kubeaccel validate` never pays for onnxruntime or
torch, and a process only imports what its command needs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click
from kubeaccel_api import __version__

# name -> "module:attribute" of a click command, imported on first use.
LAZY_COMMANDS: dict[str, str] = {
    "init": "kubeaccel_runtime.init.cli:init",
    "optimize": "kubeaccel_runtime.optimize.cli:optimize",
    "serve": "kubeaccel_runtime.serve.cli:serve",
    "run": "kubeaccel_runtime.local.cli:run",
    "stop": "kubeaccel_runtime.local.cli:stop",
    "infer": "kubeaccel_runtime.local.clients:infer",
    "bench": "kubeaccel_runtime.local.clients:bench",
}


class LazyGroup(click.Group):
    """A click group whose heavy subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module_name, attr = LAZY_COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """kubeaccel: optimize a model, prove it is still accurate, and serve it fast."""


@main.command()
def version() -> None:
    """Print the kubeaccel version."""
    click.echo(__version__)


@main.command()
@click.option("--write", is_flag=True, help="Write crds/ and the chart's CRD template.")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Repository root to write under.",
)
def crd(write: bool, root: Path) -> None:
    """Print (or write) the AcceleratedModel CustomResourceDefinition."""
    from kubeaccel_api import crdgen

    if not write:
        click.echo(crdgen.render_crd_yaml(), nl=False)
        return
    for path in crdgen.write(root):
        click.echo(f"wrote {path}")


@main.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="AcceleratedModel YAML (repeatable).",
)
def validate(files: tuple[Path, ...]) -> None:
    """Check AcceleratedModel files; print each problem with its field path."""
    from kubeaccel_runtime import terminal
    from kubeaccel_runtime.specfile import check_file

    out, err = terminal.console(), terminal.console(stderr=True)
    failed = False
    for path in files:
        resources, problems = check_file(path)
        for problem in problems:
            terminal.say(err, terminal.FAIL, f" {problem}")
        if problems:
            failed = True
        else:
            names = ", ".join(r.metadata.name for r in resources)
            terminal.say(out, terminal.OK, f" {path}: {names}")
    sys.exit(1 if failed else 0)


@main.command("fetch-artifact")
@click.argument("source", metavar="S3_URI")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def fetch_artifact(source: str, dest: Path) -> None:
    """Download the artifact at S3_URI into DEST and check every SHA-256 of its manifest.

    DEST appears only once every file verified (an existing DEST that verifies is kept).
    The AWS_* environment variables say where the server is and who is asking.
    """
    from kubeaccel_runtime import objectstore, terminal
    from kubeaccel_runtime.artifact_manifest import ArtifactInvalid

    err = terminal.console(stderr=True)
    try:
        client = objectstore.connect(objectstore.S3Settings.from_env())
        manifest = objectstore.download_artifact(client, objectstore.S3Uri.parse(source), dest)
    except (objectstore.ObjectStoreError, ArtifactInvalid, ValueError, OSError) as exc:
        terminal.say(err, terminal.ERROR, f": {exc}")
        sys.exit(1)
    terminal.say(err, terminal.OK, f" {source} -> {dest}: {len(manifest.files)} files verified")


if __name__ == "__main__":
    main()
