"""`kubeaccel infer` and `kubeaccel bench`: small, real Open Inference Protocol v2 clients."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import numpy as np
from rich.table import Table

from kubeaccel_runtime import terminal
from kubeaccel_runtime.client import OIP_TO_NUMPY, InferenceClient, OipDecodeError, OipError
from kubeaccel_runtime.loadgen import LoadError, LoadSpec, inputs_from_metadata, run

NDArray = np.ndarray[Any, Any]


class ClientInputError(ValueError):
    """Inputs the user gave that cannot be sent."""


def split_endpoint(endpoint: str, model: str | None) -> tuple[str, str]:
    """Base URL and model name from `--endpoint` (a base URL or a /v2/models/<name> URL)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientInputError(f"endpoint {endpoint!r} must be an http(s) URL")
    base = f"{parts.scheme}://{parts.netloc}"
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 3 and segments[:2] == ["v2", "models"]:
        return base, model or segments[2]
    if not model:
        raise ClientInputError(
            "no model name: pass --model or an endpoint ending in /v2/models/<name>"
        )
    return base, model


def random_inputs(metadata: dict[str, Any], batch: int, seed: int) -> dict[str, NDArray]:
    """Inputs shaped by the model's metadata (batch dim = `batch`), values in [0, 1)."""
    for spec in metadata.get("inputs", []):
        if spec["datatype"] not in OIP_TO_NUMPY:
            raise ClientInputError(
                f"input {spec['name']!r}: unsupported datatype {spec['datatype']}"
            )
    return inputs_from_metadata(metadata, batch, seed)


def file_inputs(path: Path, metadata: dict[str, Any]) -> dict[str, NDArray]:
    """Inputs from an .npy (the model's single input) or an .npz (arrays named by input)."""
    names = [spec["name"] for spec in metadata.get("inputs", [])]
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ClientInputError(f"cannot read {path}: {exc}") from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise ClientInputError(
                f"the model has inputs {names}: pass an .npz with one array each"
            )
        return {names[0]: loaded}
    with loaded:
        missing = [n for n in names if n not in loaded.files]
        if missing:
            raise ClientInputError(f"{path} lacks arrays for inputs {missing}")
        return {n: loaded[n] for n in names}


@click.command()
@click.option("--endpoint", required=True, help="Base URL, or .../v2/models/<name>.")
@click.option("--model", default=None, help="Model name (default: from the endpoint URL).")
@click.option("--random", "use_random", is_flag=True, help="Send random inputs of the right shape.")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size for --random.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json/--binary", "as_json", default=False, help="Tensor encoding (default binary).")
@click.option("--full", is_flag=True, help="Print every output value as JSON.")
def infer(
    endpoint: str,
    model: str | None,
    use_random: bool,
    file: Path | None,
    batch: int,
    seed: int,
    as_json: bool,
    full: bool,
) -> None:
    """Send one inference request and print the outputs."""
    err = terminal.console(stderr=True)
    try:
        if use_random == (file is not None):
            raise ClientInputError("pass exactly one of --random or --file")
        base, name = split_endpoint(endpoint, model)
        with InferenceClient(base) as client:
            metadata = client.metadata(name)
            if file is not None:
                inputs = file_inputs(file, metadata)
            else:
                inputs = random_inputs(metadata, batch, seed)
            result = client.infer(name, inputs, binary=not as_json)
    except (ClientInputError, OipError, OipDecodeError) as exc:
        terminal.say(err, terminal.ERROR, f": {exc}")
        sys.exit(1)
    except (httpx.HTTPError, OSError) as exc:  # connection refused, DNS, timeouts
        terminal.say(err, terminal.ERROR, f": cannot reach {endpoint}: {exc}")
        sys.exit(1)
    if full:
        click.echo(json.dumps({k: v.tolist() for k, v in result.outputs.items()}))
        return
    for out_name, value in result.outputs.items():
        line = f"{out_name}: shape={list(value.shape)} dtype={value.dtype}"
        if value.ndim == 2 and value.dtype.kind == "f":
            line += f" argmax={value.argmax(axis=1).tolist()}"
        click.echo(line)


@click.command()
@click.option("--endpoint", required=True, help="Base URL, or .../v2/models/<name>.")
@click.option("--model", default=None, help="Model name (default: from the endpoint URL).")
@click.option("--concurrency", type=int, default=8, show_default=True)
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds.")
@click.option("--requests", "max_requests", type=int, default=None, help="Stop after N requests.")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--json/--binary", "as_json", default=False, help="Tensor encoding (default binary).")
@click.option("--output-json", is_flag=True, help="Print the figures as JSON.")
def bench(
    endpoint: str,
    model: str | None,
    concurrency: int,
    duration: float,
    max_requests: int | None,
    batch: int,
    as_json: bool,
    output_json: bool,
) -> None:
    """Load-test an endpoint on a bounded budget; print p50/p90/p99 and requests/s."""
    err = terminal.console(stderr=True)
    try:
        base, name = split_endpoint(endpoint, model)
        with InferenceClient(base) as client:
            inputs = random_inputs(client.metadata(name), batch, seed=0)
        result = run(
            LoadSpec(
                url=base,
                model=name,
                inputs=inputs,
                binary=not as_json,
                concurrency=concurrency,
                requests=max_requests,
                duration_s=duration,
            )
        )
    except (ClientInputError, OipError, OipDecodeError, LoadError) as exc:
        terminal.say(err, terminal.ERROR, f": {exc}")
        sys.exit(1)
    except (httpx.HTTPError, OSError) as exc:
        terminal.say(err, terminal.ERROR, f": cannot reach {endpoint}: {exc}")
        sys.exit(1)
    if output_json:
        click.echo(json.dumps(result.as_dict()))
        return
    table = Table(
        title=f"{name}: concurrency {concurrency}, batch {batch}, {'json' if as_json else 'binary'}"
    )
    for col in ("requests", "errors", "req/s", "items/s", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.requests),
        str(result.errors),
        f"{result.rps:.1f}",
        f"{result.items_per_s:.1f}",
        f"{result.p50_ms:.2f}",
        f"{result.p90_ms:.2f}",
        f"{result.p99_ms:.2f}",
    )
    terminal.console().print(table)
    if result.errors:
        sys.exit(1)
