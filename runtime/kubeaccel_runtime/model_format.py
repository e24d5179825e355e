"""What kind of file a model is, told from its bytes, and why some kinds are refused.

First-time users hand kubeaccel whatever their framework saved. A pickle (`torch.save`,
joblib) is refused before anything parses it, and other non-models get a message that says
how to export one. Only the first bytes and a zip's table of contents are read.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from kubeaccel_api.v1alpha1 import SourceFormat

FORMATS_HINT = (
    "kubeaccel reads ONNX files, TorchScript archives (torch.jit.save) and torch.export "
    "programs (torch.export.save)"
)
EXPORT_HINT = (
    "export the model instead: torch.onnx.export(model, args, 'model.onnx'), "
    "torch.jit.save(torch.jit.script(model), 'model.pt') or "
    "torch.export.save(torch.export.export(model, args), 'model.pt2')"
)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HEAD = 16


class NotAModel(ValueError):
    """A file kubeaccel will not load as a model; the message says why and what to do."""


def _is_pickle(head: bytes) -> bool:
    # Protocols 2-5 open with PROTO <n>; so does torch.save's legacy (non-zip) format.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_safetensors(head: bytes, size: int) -> bool:
    # An 8-byte little-endian header length, then the JSON header.
    return len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size


def _zip_format(path: Path) -> SourceFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise NotAModel(f"{path.name}: a damaged zip archive ({exc})") from None
    if any(n.rsplit("/", 1)[-1] == "archive_format" for n in names):
        return SourceFormat.TORCH_EXPORTED_PROGRAM
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return SourceFormat.TORCHSCRIPT
    if any(n.rsplit("/", 1)[-1] == "data.pkl" for n in names):
        raise NotAModel(
            f"{path.name} is a torch.save checkpoint, a pickle in a zip; kubeaccel never "
            f"unpickles, because unpickling runs whatever code the file names: {EXPORT_HINT}"
        )
    raise NotAModel(
        f"{path.name} is a zip archive but neither TorchScript nor torch.export; {FORMATS_HINT}"
    )


def detect(path: Path) -> SourceFormat:
    """The format of a model file; ONNX when nothing else matches (its parser has the last word).

    Raises:
        NotAModel: a pickle, a weights-only or Keras file, an unknown zip, a directory, an
            empty or unreadable file.
    """
    if path.is_dir():
        raise NotAModel(f"{path} is a directory, not a model file; {FORMATS_HINT}")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(_HEAD)
    except OSError as exc:
        raise NotAModel(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not head:
        raise NotAModel(f"{path.name} is empty")
    if _is_pickle(head):
        raise NotAModel(
            f"{path.name} is a Python pickle; kubeaccel never unpickles, because unpickling "
            f"runs whatever code the file names: {EXPORT_HINT}"
        )
    if head.startswith(HDF5_MAGIC):
        raise NotAModel(
            f"{path.name} is an HDF5 file (a Keras .h5 model?); convert it to ONNX first "
            "(e.g. with tf2onnx)"
        )
    if _is_safetensors(head, size):
        raise NotAModel(f"{path.name} holds weights only (safetensors), no graph: {EXPORT_HINT}")
    if zipfile.is_zipfile(path):
        return _zip_format(path)
    return SourceFormat.ONNX


def check_declared(path: Path, declared: SourceFormat) -> None:
    """Refuse a file whose bytes say another format than the spec does (or no model at all).

    Raises:
        NotAModel: as `detect`, or a mismatch that names the format to write instead.
    """
    found = detect(path)
    if found is declared:
        return
    if found is SourceFormat.ONNX:
        raise NotAModel(
            f"source.format is {declared.value}, but {path.name} is not a zip archive (which "
            "TorchScript and torch.export files are); if it is ONNX, set source.format: onnx"
        )
    raise NotAModel(
        f"source.format is {declared.value}, but {path.name} is a {found.value} file; "
        f"set source.format: {found.value}"
    )
