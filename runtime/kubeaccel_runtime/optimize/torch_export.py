"""Export TorchScript and torch.export programs to ONNX (needs the `optimize` extra).

Safety: nothing is unpickled.
- TorchScript (`torch.jit.load`): the archive's data.pkl is read by TorchScript's C++
  unpickler, which rebuilds only tensors, containers and TorchScript classes; it cannot call
  arbitrary Python. The code in the archive is TorchScript, run by TorchScript's interpreter.
- torch.export programs (`torch.export.load`): the graph is JSON and most weights are raw
  bytes, but torch warns that it "uses pickle under the hood": pickled weights/constants
  (`use_pickle`) go through `torch.load(weights_only=False)` or `pickle.loads`, and the sample
  inputs fall back to `weights_only=False` when the safe load fails. So we (1) refuse any
  archive whose payload configs mark something as pickled or that holds custom objects, and
  (2) call `torch.export.load` with `torch.load` forced to `weights_only=True` and every other
  unpickling entry point replaced by one that raises.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kubeaccel_api.v1alpha1 import SourceFormat, TensorSpec
from onnx import ModelProto

from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.artifact_manifest import TensorInfo
from kubeaccel_runtime.optimize.data import generate
from kubeaccel_runtime.optimize.errors import UnsupportedModel

EXAMPLE_BATCH = 2
OPSET = 18


class UnsafeArchive(UnsupportedModel):
    """The archive would need pickle to load."""


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UnsupportedModel(
            "torchscript / torch-exported-program sources need PyTorch; install the optimize "
            "extra: pip install 'kubeaccel[optimize]'"
        ) from None
    return torch


def check_pt2_archive(path: Path) -> None:
    """Refuse a torch.export archive that contains pickled payloads or custom objects.

    Raises:
        UnsafeArchive: a payload config says use_pickle, or the archive holds custom objects.
        UnsupportedModel: not a zip archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                if name.endswith("_config.json") and "/data/" in name:
                    config = json.loads(archive.read(name))
                    for key, meta in (config.get("config") or {}).items():
                        if isinstance(meta, dict) and meta.get("use_pickle"):
                            raise UnsafeArchive(
                                f"{path.name}: payload {key!r} is pickled; refusing to load it"
                            )
                if "/custom_objects/" in name or name.endswith(".pkl"):
                    raise UnsafeArchive(f"{path.name}: contains pickled object {name!r}")
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnsupportedModel(f"{path.name}: not a torch.export archive ({exc})") from None


def _refuse(*_: object, **__: object) -> Any:
    raise UnsafeArchive("the archive needs pickle to load; refusing")


@contextlib.contextmanager
def no_unpickling(torch: Any) -> Iterator[None]:
    """Within the block, torch.load only runs with weights_only=True and pickle is refused."""
    import torch.export.pt2_archive._package as package

    real_load = torch.load

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("weights_only") is False:
            _refuse()
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    class _NoPickle:
        loads = staticmethod(_refuse)
        load = staticmethod(_refuse)

    patches: list[tuple[Any, str, Any]] = [
        (torch, "load", safe_load),
        (package, "pickle", _NoPickle),
        (torch._C, "_pickle_load_obj", _refuse),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _example_args(torch: Any, contract: Sequence[TensorSpec]) -> tuple[Any, ...]:
    infos = [TensorInfo(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in contract]
    samples = generate(infos, contract, count=EXAMPLE_BATCH, seed=0)
    return tuple(torch.from_numpy(samples.inputs[t.name]) for t in contract)


def _dynamic_axes(specs: Sequence[TensorSpec]) -> dict[str, dict[int, str]]:
    return {
        t.name: {
            axis: ("batch" if axis == 0 else f"{t.name}_d{axis}")
            for axis, d in enumerate(t.shape)
            if d == -1
        }
        for t in specs
    }


def _export(
    torch: Any,
    path: Path,
    fmt: SourceFormat,
    inputs: Sequence[TensorSpec],
    output_names: list[str] | None,
    out: Path,
) -> None:
    input_names = [t.name for t in inputs]
    if fmt is SourceFormat.TORCHSCRIPT:
        module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
        names = output_names or ["output"]
        torch.onnx.export(
            module,
            _example_args(torch, inputs),
            str(out),
            dynamo=False,  # torch.export cannot trace ScriptModules
            input_names=input_names,
            output_names=names,
            dynamic_axes=_dynamic_axes(inputs) | {n: {0: "batch"} for n in names},
            opset_version=OPSET,
        )
    elif fmt is SourceFormat.TORCH_EXPORTED_PROGRAM:
        check_pt2_archive(path)
        with no_unpickling(torch):
            program = torch.export.load(str(path))
        # The program carries its own (possibly dynamic) shapes; no example inputs needed.
        torch.onnx.export(
            program,
            (),
            str(out),
            dynamo=True,
            external_data=False,
            input_names=input_names,
            output_names=output_names,
            verbose=False,  # else progress lines go to stdout (`kubeaccel init -o -` writes YAML there)
        )
    else:
        raise UnsupportedModel(f"{fmt.value} is not a torch format")


def export_to_onnx(
    path: Path,
    fmt: SourceFormat,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec] | None,
    work: Path,
) -> ModelProto:
    """Load a TorchScript or torch.export file and return it as an ONNX model.

    Raises:
        UnsupportedModel: torch missing, unsafe or unreadable archive, or the export failed.
    """
    torch = _import_torch()
    out = work / "exported.onnx"
    output_names = [t.name for t in outputs] if outputs else None
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript and its exporter loudly; the Job log needs none of it.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            _export(torch, path, fmt, inputs, output_names, out)
    except UnsupportedModel:
        raise
    except Exception as exc:  # torch raises many unrelated types while loading/exporting
        raise UnsupportedModel(
            f"{path.name}: cannot export {fmt.value} to ONNX: {onnx_io.first_line(exc)}"
        ) from None
    try:
        return onnx_io.load(out)
    except onnx_io.ModelLoadError as exc:
        raise UnsupportedModel(f"exported ONNX model is invalid: {exc}") from None
