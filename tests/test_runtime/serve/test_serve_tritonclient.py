"""A standard OIP v2 client (Triton's `tritonclient.http`) works against the server unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from kubeaccel_runtime.serve.app import ServeApp
from kubeaccel_runtime.serve.session import LoadedModel
from serve_fixtures import ServerThread

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

X = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)


@pytest.fixture
def triton(
    mlp_model: LoadedModel, app_factory: Callable[..., ServeApp]
) -> Iterator[httpclient.InferenceServerClient]:
    with ServerThread(app_factory(mlp_model)) as srv:
        client = httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))
        yield client
        client.close()


def expected(artifact: Path) -> np.ndarray:
    sess = ort.InferenceSession(str(artifact / "shard-0.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": X})[0]  # type: ignore[no-any-return]


def test_tritonclient_sees_a_live_ready_server_and_model(
    triton: httpclient.InferenceServerClient, mlp_model: LoadedModel
) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("mlp")
    assert triton.is_model_ready("mlp", model_version=mlp_model.version)
    meta = triton.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False)])
def test_tritonclient_inference_matches_onnxruntime_in_every_encoding(
    triton: httpclient.InferenceServerClient, mlp_artifact: Path, binary_in: bool, binary_out: bool
) -> None:
    inp = httpclient.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("y", binary_data=binary_out)
    result = triton.infer("mlp", [inp], outputs=[out], request_id="t-1")
    np.testing.assert_array_equal(result.as_numpy("y"), expected(mlp_artifact))
    assert result.get_response()["id"] == "t-1"


def test_tritonclient_default_request_returns_every_output(
    triton: httpclient.InferenceServerClient, mlp_artifact: Path
) -> None:
    inp = httpclient.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = triton.infer("mlp", [inp])
    np.testing.assert_array_equal(result.as_numpy("y"), expected(mlp_artifact))


def test_tritonclient_gets_the_servers_validation_message(
    triton: httpclient.InferenceServerClient,
) -> None:
    bad = np.zeros((2, 5), dtype=np.float32)
    inp = httpclient.InferInput("x", list(bad.shape), "FP32")
    inp.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException, match="dimension 1 must be 4"):
        triton.infer("mlp", [inp])
