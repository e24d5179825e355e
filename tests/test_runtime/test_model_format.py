"""Telling a model file's format from its bytes, and refusing what must never be loaded."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
from kubeaccel_api.v1alpha1 import SourceFormat
from kubeaccel_runtime.model_format import NotAModel, check_declared, detect

torch = pytest.importorskip("torch")


class _Tiny(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.fc(x)


def test_an_onnx_file_is_onnx(tmp_path: Path, opt_models) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.onnx"
    path.write_bytes(opt_models.mlp().SerializeToString())
    assert detect(path) is SourceFormat.ONNX


def test_torchscript_and_torch_export_archives_are_told_apart(tmp_path: Path) -> None:
    script, program = tmp_path / "m.pt", tmp_path / "m.pt2"
    torch.jit.script(_Tiny()).save(str(script))
    torch.export.save(torch.export.export(_Tiny(), (torch.randn(2, 4),)), str(program))
    assert detect(script) is SourceFormat.TORCHSCRIPT
    assert detect(program) is SourceFormat.TORCH_EXPORTED_PROGRAM


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_bytes(pickle.dumps({"weights": [1, 2]})), "is a Python pickle"),
        (lambda p: torch.save(_Tiny(), str(p)), "is a torch.save checkpoint"),
        (lambda p: torch.save(_Tiny().state_dict(), str(p)), "is a torch.save checkpoint"),
    ],
    ids=["pickle", "torch-save-module", "torch-save-state-dict"],
)
def test_pickles_are_refused_with_why_and_how_to_export(tmp_path: Path, make, words) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(NotAModel) as info:
        detect(path)
    message = str(info.value)
    assert words in message
    assert "unpickling runs whatever code the file names" in message
    assert "torch.onnx.export" in message and "torch.export.save" in message


def test_weights_only_keras_empty_and_directory_inputs_get_their_own_words(tmp_path: Path) -> None:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (tmp_path / "w.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 32)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    cases = {
        "w.safetensors": "holds weights only (safetensors), no graph",
        "m.h5": "is an HDF5 file",
        "empty.onnx": "is empty",
        "other.zip": "is a zip archive but neither TorchScript nor torch.export",
    }
    for name, words in cases.items():
        with pytest.raises(NotAModel, match=words.replace("(", r"\(").replace(")", r"\)")):
            detect(tmp_path / name)
    with pytest.raises(NotAModel, match="is a directory"):
        detect(tmp_path)


def test_a_declared_format_that_the_bytes_contradict_names_the_right_one(tmp_path: Path) -> None:
    script = tmp_path / "m.pt"
    torch.jit.script(_Tiny()).save(str(script))
    with pytest.raises(NotAModel, match=r"set source\.format: torchscript"):
        check_declared(script, SourceFormat.ONNX)
    plain = tmp_path / "m.onnx"
    plain.write_bytes(b"\x08\x09" + b"\0" * 30)
    with pytest.raises(NotAModel, match=r"if it is ONNX, set source\.format: onnx"):
        check_declared(plain, SourceFormat.TORCH_EXPORTED_PROGRAM)
    check_declared(script, SourceFormat.TORCHSCRIPT)
