"""`kubeaccel init MODEL`: write a complete, commented AcceleratedModel for a model file."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
from kubeaccel_api import __version__
from kubeaccel_api.v1alpha1 import SourceFormat
from kubeaccel_api.validation import InvalidResource, parse_resource

from kubeaccel_runtime import terminal
from kubeaccel_runtime.init.draft import Choices, Draft, build_draft
from kubeaccel_runtime.init.probe import (
    URI_SCHEMES,
    InitError,
    ModelFacts,
    parse_input,
    probe_data,
    probe_model,
)
from kubeaccel_runtime.init.render import render


@dataclass(frozen=True)
class InitRequest:
    """A model reference and what the user chose for its spec."""

    model: str
    fmt: SourceFormat | None = None
    inputs: tuple[str, ...] = ()
    name: str | None = None
    shards: int = 1
    gpus: int = 0
    calibration: str | None = None
    validation: str | None = None


@dataclass(frozen=True)
class Drafted:
    """The spec drafted for a model, and the facts it came from."""

    draft: Draft
    facts: ModelFacts

    def yaml(self, shown_as: str) -> str:
        """The spec as commented YAML; `shown_as` is the file name its header tells to use."""
        return render(self.draft, _header(self.facts, shown_as))


def _header(facts: ModelFacts, shown_as: str) -> list[str]:
    return [
        f"AcceleratedModel for {facts.file_name}, written by `kubeaccel init` (kubeaccel "
        f"{__version__}).",
        f"  kubeaccel validate -f {shown_as}   check it offline",
        f"  kubeaccel run -f {shown_as}        optimize and serve it here, no cluster needed",
        f"  kubectl apply -f {shown_as}        deploy it (with a source.uri the cluster reads)",
    ]


def draft_for_model(request: InitRequest, *, cwd: Path) -> Drafted:
    """Probe the model (and data files), draft the spec and check it.

    Raises:
        InitError: the model, a data file or a choice cannot make a valid spec.
    """
    declared = [parse_input(text) for text in request.inputs]
    with tempfile.TemporaryDirectory(prefix="kubeaccel-init-") as tmp:
        facts = probe_model(
            request.model, work=Path(tmp), cwd=cwd, fmt=request.fmt, inputs=declared
        )
    choices = Choices(
        name=request.name,
        shards=request.shards,
        gpus=request.gpus,
        calibration=probe_data(request.calibration, facts.contract, cwd=cwd, what="calibration")
        if request.calibration
        else None,
        validation=probe_data(request.validation, facts.contract, cwd=cwd, what="validation")
        if request.validation
        else None,
    )
    draft = build_draft(facts, choices)
    try:
        parse_resource(draft.doc)
    except InvalidResource as exc:
        raise InitError("the spec would be invalid:\n  " + "\n  ".join(exc.problems)) from None
    return Drafted(draft, facts)


def default_output(model: str, name: str) -> Path:
    """Next to a local model (same name, .yaml); `<name>.yaml` here for a URI."""
    if model.startswith(URI_SCHEMES):
        return Path(f"{name}.yaml")
    return Path(model).with_suffix(".yaml")


def _fail(message: str) -> None:
    terminal.say(terminal.console(stderr=True), terminal.FAIL, f" {message}")
    sys.exit(1)


@click.command("init")
@click.argument("model")
@click.option(
    "-o",
    "--output",
    default=None,
    help="Where to write the YAML ('-' for stdout; default: next to the model, <name>.yaml).",
)
@click.option("--name", default=None, help="metadata.name (default: from the file name).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in SourceFormat]),
    default=None,
    help="Model format (default: told from the file's bytes).",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME:DTYPE:SHAPE",
    help="An input of the contract, e.g. x:float32:-1,3,224,224 (repeatable). Needed for "
    "TorchScript, which records no shapes; otherwise checked against the model.",
)
@click.option("--shards", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--gpus", type=click.IntRange(0, 16), default=0, show_default=True, help="Per pod.")
@click.option(
    "--calibration",
    default=None,
    help="Static INT8 calibration samples: .npz (one array per input) or .npy; path or URI.",
)
@click.option(
    "--validation",
    default=None,
    help="Samples the accuracy budget is checked on: .npz/.npy, path or URI; a `labels` "
    "array adds an accuracy-drop budget.",
)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def init(
    model: str,
    output: str | None,
    name: str | None,
    fmt: str | None,
    inputs: tuple[str, ...],
    shards: int,
    gpus: int,
    calibration: str | None,
    validation: str | None,
    force: bool,
) -> None:
    """Write an AcceleratedModel for MODEL (a path or URI): digest, format and the request
    contract read from the model, plus optimization and runtime defaults."""
    request = InitRequest(
        model=model,
        fmt=SourceFormat(fmt) if fmt else None,
        inputs=inputs,
        name=name,
        shards=shards,
        gpus=gpus,
        calibration=calibration,
        validation=validation,
    )
    try:
        result = draft_for_model(request, cwd=Path.cwd())
    except InitError as exc:
        _fail(str(exc))
        return
    if output == "-":
        click.echo(result.yaml(f"{result.draft.name}.yaml"), nl=False)
        return
    target = Path(output) if output else default_output(model, result.draft.name)
    if target.exists() and not force:
        _fail(f"{target} exists; pass --force to overwrite it, or -o another path")
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(result.yaml(str(target)))
    except OSError as exc:
        _fail(f"cannot write {target}: {exc.strerror or exc}")
        return
    contract = result.facts.contract
    origin = "given with --input" if result.facts.declared_inputs else "read from the model"
    out = terminal.console()
    terminal.say(
        out,
        terminal.OK,
        f" wrote {target}: {result.draft.name} ({result.facts.format.value}, "
        f"{len(contract.inputs)} input(s) and {len(contract.outputs)} output(s) {origin})",
    )
    terminal.say(out, f"  next: kubeaccel validate -f {target} && kubeaccel run -f {target}")
