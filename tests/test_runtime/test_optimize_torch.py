"""TorchScript and torch.export sources: exported to ONNX, never unpickled."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import DType, SourceFormat, TensorSpec
from kubeaccel_runtime.optimize.errors import UnsupportedModel
from kubeaccel_runtime.optimize.torch_export import UnsafeArchive, check_pt2_archive, export_to_onnx

torch = pytest.importorskip("torch")

CONTRACT = [TensorSpec(name="input", dtype=DType.FLOAT32, shape=[-1, 6])]
OUTPUTS = [TensorSpec(name="scores", dtype=DType.FLOAT32, shape=[-1, 3])]


class _Tiny(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return torch.relu(self.fc(x))


def _expected(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return _Tiny().eval()(torch.from_numpy(x)).numpy()


def _run(model, x):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_a_torchscript_module_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(_Tiny().eval()).save(str(path))
    model = export_to_onnx(path, SourceFormat.TORCHSCRIPT, CONTRACT, OUTPUTS, tmp_path)
    assert [o.name for o in model.graph.output] == ["scores"]
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), _expected(x), atol=1e-5)


def test_a_torch_exported_program_exports_without_unpickling(tmp_path):
    path = tmp_path / "m.pt2"
    program = torch.export.export(
        _Tiny().eval(), (torch.randn(2, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(path))
    model = export_to_onnx(path, SourceFormat.TORCH_EXPORTED_PROGRAM, CONTRACT, OUTPUTS, tmp_path)
    x = np.random.default_rng(1).standard_normal((7, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), _expected(x), atol=1e-5)


def _archive_with_pickled_weight(path: Path) -> None:
    config = {"config": {"fc.weight": {"path_name": "weight_0", "use_pickle": True}}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data/weights/model_weights_config.json", json.dumps(config))
        archive.writestr("m/data/weights/weight_0", pickle.dumps(object()))


def test_archives_with_pickled_payloads_are_refused_before_loading(tmp_path):
    path = tmp_path / "evil.pt2"
    _archive_with_pickled_weight(path)
    with pytest.raises(UnsafeArchive, match=r"payload 'fc\.weight' is pickled; refusing"):
        check_pt2_archive(path)
    with pytest.raises(UnsafeArchive):
        export_to_onnx(path, SourceFormat.TORCH_EXPORTED_PROGRAM, CONTRACT, None, tmp_path)


def test_unpickling_is_refused_inside_the_loader_guard(tmp_path):
    from kubeaccel_runtime.optimize.torch_export import no_unpickling

    blob = tmp_path / "obj.pt"
    torch.save({"a": object()}, str(blob))
    with no_unpickling(torch):
        with pytest.raises(UnsafeArchive):
            torch.load(str(blob), weights_only=False)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(str(blob))  # forced weights_only=True rejects the object
    assert torch.load(str(blob), weights_only=False)["a"] is not None  # restored afterwards


def test_a_non_archive_is_an_unsupported_model(tmp_path):
    path = tmp_path / "not.pt2"
    path.write_bytes(b"plain bytes")
    with pytest.raises(UnsupportedModel, match=r"not a torch\.export archive"):
        check_pt2_archive(path)
    with pytest.raises(UnsupportedModel, match="cannot export torchscript to ONNX"):
        export_to_onnx(path, SourceFormat.TORCHSCRIPT, CONTRACT, None, tmp_path)
