"""Read what a spec needs from a model file and from data files: digest, format, contract.

The model is read the way the optimization Job reads it (same fetcher, same format check,
same ONNX loader and contract reader, same torch exporter), so a spec written from these
facts describes what the Job will find.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kubeaccel_api.contract import contract_problems
from kubeaccel_api.v1alpha1 import ModelContract, SourceFormat, TensorSpec
from kubeaccel_api.validation import format_errors
from onnx import ModelProto
from pydantic import ValidationError

from kubeaccel_runtime import model_format, onnx_io
from kubeaccel_runtime.artifact_manifest import TensorInfo, sha256_file
from kubeaccel_runtime.model_contract import ContractUnreadable, read_contract
from kubeaccel_runtime.optimize import data as sample_data
from kubeaccel_runtime.optimize import source as sources
from kubeaccel_runtime.optimize.errors import OptimizeError

URI_SCHEMES = ("file://", "http://", "https://", "s3://", "pvc://")
# The API's bound on DataSource.samples: more than this is never used.
MAX_SAMPLES = 100_000


class InitError(ValueError):
    """A model or data file init cannot write a spec for; the message says what to do."""


@dataclass(frozen=True)
class ModelFacts:
    """What the spec records about the model."""

    uri: str
    file_name: str
    format: SourceFormat
    sha256: str
    bytes: int  # the model file plus any external weight files
    contract: ModelContract
    declared_inputs: bool  # the contract's inputs came from --input, not from the model


@dataclass(frozen=True)
class DataFacts:
    """A validation or calibration file: where it is and what it holds."""

    uri: str
    samples: int | None  # None: a remote file, not read here
    labelled: bool


def as_uri(ref: str) -> str:
    """A URI for a model or data reference: URIs stay, local paths become file:// URIs.

    Relative paths stay relative: the optimizer resolves them against its working directory,
    exactly as init did.
    """
    if ref.startswith(URI_SCHEMES):
        return ref
    path = ref.replace(os.sep, "/")
    normal = os.path.normpath(path).replace(os.sep, "/")
    return f"file://{normal if PurePosixPath(path).is_absolute() else normal.lstrip('/')}"


def _local_or_fetched(
    uri: str, work: Path, *, cwd: Path, pvc: Path
) -> tuple[sources.Fetched, bool]:
    """The model file and whether it was fetched: a local file is read where it is (messages
    then name the user's path), a remote one is fetched into `work`."""
    try:
        location = sources.resolve(uri, cwd=cwd, pvc=pvc)
        if location.path is None:
            name = PurePosixPath(uri.partition("://")[2].split("?", 1)[0]).name or "model"
            fetched = sources.fetch(
                uri,
                work / name,
                expected_sha256=None,
                cwd=cwd,
                pvc=pvc,
                limits=sources.FetchLimits(),
            )
            return fetched, True
    except OptimizeError as exc:
        raise InitError(str(exc)) from None
    path = location.path
    if not path.is_file():
        raise InitError(f"{uri}: no such file {path}")
    try:
        digest, size = sha256_file(path), path.stat().st_size
    except OSError as exc:
        raise InitError(f"{uri}: cannot read {path}: {exc.strerror or exc}") from None
    return sources.Fetched(uri, path, digest, size, verified=False), False


def _onnx_model(
    fetched: sources.Fetched, remote: bool, *, cwd: Path, pvc: Path
) -> tuple[ModelProto, int]:
    try:
        names = onnx_io.peek_external_data(fetched.path)
        if remote and names:  # refused, as the Job refuses it: no directory to read them from
            sources.copy_companions(fetched, names, cwd=cwd, pvc=pvc)
        # Signature only: external weights are checked to exist but not read.
        model = onnx_io.load(fetched.path, weights=False)
    except onnx_io.NotOnnx as exc:
        raise InitError(f"{exc}; {model_format.FORMATS_HINT}") from None
    except onnx_io.ModelLoadError as exc:
        raise InitError(str(exc)) from None
    except OptimizeError as exc:
        raise InitError(str(exc)) from None
    extra = sum((fetched.path.parent / name).stat().st_size for name in names)
    return model, fetched.bytes + extra


def _torch_model(
    fetched: sources.Fetched, fmt: SourceFormat, inputs: Sequence[TensorSpec], work: Path
) -> ModelProto:
    from kubeaccel_runtime.optimize.torch_export import export_to_onnx

    if fmt is SourceFormat.TORCHSCRIPT and not inputs:
        raise InitError(
            f"{fetched.path.name} is TorchScript, which does not record input dtypes and "
            "shapes: name each input with --input NAME:DTYPE:SHAPE "
            "(e.g. --input x:float32:-1,3,224,224; -1 is a dynamic dimension)"
        )
    try:
        return export_to_onnx(fetched.path, fmt, inputs, None, work)
    except OptimizeError as exc:
        raise InitError(str(exc)) from None


def _contract(model: ModelProto, declared: Sequence[TensorSpec]) -> ModelContract:
    try:
        found = read_contract(model)
    except ContractUnreadable as exc:
        raise InitError(f"cannot read the request contract from the model: {exc}") from None
    if not declared:
        return found
    problems = contract_problems(declared, None, found.inputs, [], where="--input")
    if problems:
        raise InitError("--input does not match the model:\n  " + "\n  ".join(problems))
    return found.model_copy(update={"inputs": list(declared)})


def probe_model(
    ref: str,
    *,
    work: Path,
    cwd: Path,
    fmt: SourceFormat | None = None,
    inputs: Sequence[TensorSpec] = (),
) -> ModelFacts:
    """Fetch (or read) a model, then hash it, tell its format and read its contract.

    Raises:
        InitError: unreadable, a pickle or another non-model, a format other than `fmt`,
            missing external data, or a signature no contract can describe.
    """
    uri = as_uri(ref)
    pvc = sources.pvc_root()
    fetched, remote = _local_or_fetched(uri, work / "model", cwd=cwd, pvc=pvc)
    try:
        found = model_format.detect(fetched.path)
        if fmt is not None and fmt is not found:
            model_format.check_declared(fetched.path, fmt)
    except model_format.NotAModel as exc:
        raise InitError(str(exc)) from None
    if found is SourceFormat.ONNX:
        model, size = _onnx_model(fetched, remote, cwd=cwd, pvc=pvc)
    else:
        model, size = _torch_model(fetched, found, inputs, work), fetched.bytes
    return ModelFacts(
        uri=uri,
        file_name=fetched.path.name,
        format=found,
        sha256=fetched.sha256,
        bytes=size,
        contract=_contract(model, inputs),
        declared_inputs=bool(inputs),
    )


def probe_data(ref: str, contract: ModelContract, *, cwd: Path, what: str) -> DataFacts:
    """Check a local .npz/.npy against the model's inputs the way the Job will read it.

    Other URIs (http(s), s3, and pvc://, a claim the cluster mounts) are only named: the
    Job fetches and checks them.

    Raises:
        InitError: a local file that is missing, unreadable or does not fit the inputs.
    """
    uri = as_uri(ref)
    try:
        location = sources.resolve(uri, cwd=cwd, pvc=sources.pvc_root())
    except OptimizeError as exc:
        raise InitError(f"--{what}: {exc}") from None
    if location.path is None or location.scheme != "file":
        return DataFacts(uri=uri, samples=None, labelled=False)
    if not location.path.is_file():
        raise InitError(f"--{what}: no such file {location.path}")
    infos = [TensorInfo(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in contract.inputs]
    try:
        samples = sample_data.read_file(location.path, infos, count=MAX_SAMPLES)
    except OptimizeError as exc:
        raise InitError(f"--{what}: {exc}") from None
    return DataFacts(uri=uri, samples=samples.count, labelled=samples.labels is not None)


def parse_input(text: str) -> TensorSpec:
    """`NAME:DTYPE:SHAPE` (shape comma-separated, -1 dynamic) as a TensorSpec.

    Raises:
        InitError: not three parts, or a value the API refuses.
    """
    parts = text.split(":")
    if len(parts) != 3:
        raise InitError(
            f"--input {text!r}: expected NAME:DTYPE:SHAPE, e.g. input:float32:-1,3,224,224"
        )
    name, dtype, shape_text = parts
    try:
        shape = [int(d) for d in shape_text.strip("[]() ").split(",") if d.strip()]
    except ValueError:
        raise InitError(
            f"--input {text!r}: shape must be comma-separated integers (-1 is dynamic)"
        ) from None
    try:
        return TensorSpec.model_validate({"name": name, "dtype": dtype, "shape": shape})
    except ValidationError as exc:
        raise InitError(f"--input {text!r}: " + "; ".join(format_errors(exc))) from None
