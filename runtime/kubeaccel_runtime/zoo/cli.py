"""Command line of the example model builder (`python -m kubeaccel_runtime.zoo`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from kubeaccel_runtime import terminal
from kubeaccel_runtime.zoo.digests import DigestChange, stale_digests, sync_examples

MODEL_NAMES = ("cnn", "mlp", "transformer", "embedder")


def _model_files(out_dir: Path, names: tuple[str, ...]) -> list[Path]:
    return [out_dir / f"{name}.onnx" for name in names]


def _report_changes(console: Console, changes: list[DigestChange], base: Path) -> None:
    for change in changes:
        where = _relative(change.yaml_file, base)
        if change.rewritten:
            terminal.say(
                console,
                f"updated {where}: sha256 {change.old} -> {change.new} "
                f"({_relative(change.model_file, base)})",
            )
        elif change.note:
            terminal.say(console, f"skipped {where}: {change.note}")
        else:
            terminal.say(console, f"{where}: sha256 already current")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("examples/models"),
    show_default=True,
    help="Where models and data go.",
)
@click.option(
    "--examples",
    "examples_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("examples"),
    show_default=True,
    help="Folder whose *.yaml get the built models' sha256.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    type=click.Choice(MODEL_NAMES),
    help="Build only this model (repeatable); default: all.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Override every model's epochs (quick, lower-accuracy builds).",
)
@click.option("--no-sync", is_flag=True, help="Do not touch the YAML files.")
@click.option(
    "--sync-only",
    is_flag=True,
    help="Build nothing: only make the YAML digests match the existing model files.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Build and write nothing: fail unless every YAML digest matches its model file.",
)
def main(
    out_dir: Path,
    examples_dir: Path,
    models: tuple[str, ...],
    seed: int,
    epochs: int | None,
    no_sync: bool,
    sync_only: bool,
    check: bool,
) -> None:
    """Train and export the example models on bundled digits; sync examples/*.yaml digests.

    file:// URIs in the YAML files are resolved against the current directory, as
    `kubeaccel optimize` does, so run this from the repository root.
    """
    console, err = terminal.console(), terminal.console(stderr=True)
    names = models or MODEL_NAMES
    base = Path.cwd()
    if not (sync_only or check):
        _build(console, out_dir, names, seed, epochs)
    if no_sync:
        return
    missing = [p for p in _model_files(out_dir, names) if not p.is_file()]
    if missing:
        terminal.say(
            err,
            f"missing model file(s): {', '.join(map(str, missing))}; they are committed: "
            "`git checkout -- examples/models`, or retrain with `make examples-rebuild`",
        )
        sys.exit(1)
    if not examples_dir.is_dir():
        terminal.say(err, f"no examples folder {examples_dir}; nothing to sync")
        return
    if check:
        _check(console, err, examples_dir, _model_files(out_dir, names), base)
        return
    changes, problems = sync_examples(examples_dir, _model_files(out_dir, names), base)
    _report_changes(console, changes, base)
    for problem in problems:
        terminal.say(err, terminal.FAIL, f" {problem}")
    if problems:
        sys.exit(1)


def _check(
    console: Console, err: Console, examples_dir: Path, model_files: list[Path], base: Path
) -> None:
    stale = stale_digests(examples_dir, model_files, base)
    for change in stale:
        terminal.say(
            err,
            f"{_relative(change.yaml_file, base)}: sha256 {change.old} does not match "
            f"{_relative(change.model_file, base)} ({change.new}); the committed models are "
            "the reference: `git checkout -- examples`, or after retraining on purpose "
            "`make examples-rebuild` and commit both",
        )
    if stale:
        sys.exit(1)
    terminal.say(console, f"examples: {len(model_files)} model file(s) match their YAML digests")


def _build(
    console: Console, out_dir: Path, names: tuple[str, ...], seed: int, epochs: int | None
) -> None:
    # torch is imported only when something is actually built.
    from kubeaccel_runtime.zoo.build import BuiltModel, build_all

    table = Table(title=f"example models (seed {seed}) in {out_dir}")
    for column in ("model", "input", "params", "bytes", "train s", "val acc", "|ort-torch|"):
        table.add_column(column, justify="left" if column in ("model", "input") else "right")
    table.add_column("sha256")

    def on_built(m: BuiltModel) -> None:
        terminal.say(
            console,
            f"built {m.name}: {m.summary}; trained in {m.train_seconds:.1f} s; "
            f"held-out accuracy {m.accuracy_onnx:.4f} ({m.val_samples} samples)",
        )
        table.add_row(
            m.name,
            str(list(m.input_shape)),
            f"{m.params:,}",
            f"{m.bytes:,}",
            f"{m.train_seconds:.1f}",
            f"{m.accuracy_onnx:.4f}",
            f"{m.max_abs_diff:.1e}",
            m.sha256,
        )

    start = time.perf_counter()
    try:
        build_all(out_dir, names, seed=seed, epochs=epochs, on_built=on_built)
    except (ValueError, OSError) as exc:
        terminal.say(terminal.console(stderr=True), terminal.FAIL, f" build failed: {exc}")
        sys.exit(1)
    # Wide enough for full digests even when stdout is not a terminal (rich assumes 80).
    terminal.console(width=max(console.width, 170)).print(table)
    terminal.say(console, f"built {len(names)} model(s) in {time.perf_counter() - start:.1f} s")
