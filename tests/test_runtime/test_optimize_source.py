"""Fetching and verifying sources, and reading sample data."""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import DType, TensorSpec, ValueRange
from kubeaccel_runtime.artifact_manifest import TensorInfo
from kubeaccel_runtime.optimize.data import generate, read_file
from kubeaccel_runtime.optimize.errors import DataError, DigestMismatch, SourceError
from kubeaccel_runtime.optimize.source import FetchLimits, fetch, resolve

BLOB = b"model bytes " * 1000
DIGEST = hashlib.sha256(BLOB).hexdigest()


def _fetch(uri: str, tmp_path: Path, expected: str | None = DIGEST, **kw):  # type: ignore[no-untyped-def]
    return fetch(
        uri,
        tmp_path / "work" / "model.onnx",
        expected_sha256=expected,
        cwd=kw.get("cwd", tmp_path),
        pvc=kw.get("pvc", tmp_path / "pvc"),
        limits=kw.get("limits", FetchLimits(timeout_s=5)),
    )


def test_relative_file_uris_resolve_against_the_working_directory(tmp_path):
    assert (
        resolve("file://models/a.onnx", cwd=tmp_path, pvc=Path("/p")).path
        == tmp_path / "models/a.onnx"
    )
    assert resolve("file:///abs/a.onnx", cwd=tmp_path, pvc=Path("/p")).path == Path("/abs/a.onnx")


def test_pvc_uris_resolve_under_the_mount_root_and_cannot_escape(tmp_path):
    assert resolve("pvc://claim/dir/m.onnx", cwd=tmp_path, pvc=Path("/mnt/s")).path == Path(
        "/mnt/s/claim/dir/m.onnx"
    )
    for bad in ("pvc://claim/../other/m.onnx", "pvc://claim", "pvc://../x/m.onnx"):
        with pytest.raises(SourceError, match="expected pvc://<claim>/<relative path>"):
            resolve(bad, cwd=tmp_path, pvc=Path("/mnt/s"))


def test_unknown_schemes_are_rejected(tmp_path):
    with pytest.raises(SourceError, match="unsupported scheme 'ftp'"):
        resolve("ftp://host/m.onnx", cwd=tmp_path, pvc=tmp_path)


def test_a_local_file_is_copied_and_its_digest_verified(tmp_path):
    (tmp_path / "m.onnx").write_bytes(BLOB)
    got = _fetch("file://m.onnx", tmp_path)
    assert got.sha256 == DIGEST and got.verified and got.path.read_bytes() == BLOB


def test_a_digest_mismatch_is_a_clear_error_and_keeps_nothing(tmp_path):
    (tmp_path / "m.onnx").write_bytes(BLOB + b"tampered")
    with pytest.raises(DigestMismatch, match=f"spec says {DIGEST}, the file has [0-9a-f]{{64}}"):
        _fetch("file://m.onnx", tmp_path)
    assert not (tmp_path / "work" / "model.onnx").exists()


def test_a_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        _fetch("file://absent.onnx", tmp_path)


def test_pvc_sources_are_read_from_the_claim_directory(tmp_path):
    claim = tmp_path / "pvc" / "models"
    claim.mkdir(parents=True)
    (claim / "m.onnx").write_bytes(BLOB)
    assert _fetch("pvc://models/m.onnx", tmp_path).sha256 == DIGEST


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/model.onnx":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            self.wfile.write(BLOB)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def opt_http() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_sources_stream_and_verify(tmp_path, opt_http):
    got = _fetch(f"{opt_http}/model.onnx", tmp_path)
    assert got.sha256 == DIGEST and got.bytes == len(BLOB)


def test_http_sources_over_the_size_cap_are_refused(tmp_path, opt_http):
    with pytest.raises(SourceError, match="larger than the 100-byte limit"):
        _fetch(f"{opt_http}/model.onnx", tmp_path, limits=FetchLimits(max_bytes=100, timeout_s=5))
    assert not (tmp_path / "work" / "model.onnx").exists()


def test_http_errors_are_source_errors(tmp_path, opt_http):
    with pytest.raises(SourceError, match="HTTP 404"):
        _fetch(f"{opt_http}/missing.onnx", tmp_path)


def test_s3_without_the_client_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "minio", None)  # import minio -> ImportError
    with pytest.raises(SourceError, match=r"install the s3 extra: pip install 'kubeaccel\[s3\]'"):
        _fetch("s3://bucket/models/m.onnx", tmp_path)


# --------------------------------------------------------------------------- data

_INFO = [TensorInfo(name="input", dtype=DType.FLOAT32, shape=[-1, 4])]


def test_generated_samples_are_deterministic_and_respect_ranges():
    contract = [
        TensorSpec(name="input", dtype=DType.FLOAT32, shape=[-1, 4], range=ValueRange(min=0, max=1))
    ]
    a = generate(_INFO, contract, count=10, seed=5)
    b = generate(_INFO, contract, count=10, seed=5)
    np.testing.assert_array_equal(a.inputs["input"], b.inputs["input"])
    assert a.inputs["input"].shape == (10, 4)
    assert a.inputs["input"].min() >= 0 and a.inputs["input"].max() <= 1


def test_generated_integer_inputs_stay_in_their_declared_range():
    info = [TensorInfo(name="ids", dtype=DType.INT64, shape=[-1, -1])]
    contract = [
        TensorSpec(name="ids", dtype=DType.INT64, shape=[-1, -1], range=ValueRange(min=0, max=99))
    ]
    ids = generate(info, contract, count=3, seed=0).inputs["ids"]
    assert ids.dtype == np.int64 and ids.shape == (3, 16)
    assert ids.min() >= 0 and ids.max() <= 99


def test_npz_samples_are_read_cast_and_labelled(tmp_path):
    path = tmp_path / "val.npz"
    np.savez(path, input=np.arange(24, dtype=np.float64).reshape(6, 4), labels=np.arange(6))
    samples = read_file(path, _INFO, count=4)
    assert samples.count == 4 and samples.inputs["input"].dtype == np.float32
    assert samples.labels is not None and samples.labels.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"other": np.zeros((2, 4))}, "no array named 'input'"),
        ({"input": np.zeros((2, 5))}, r"shape \[2, 5\], the model expects \[-1, 4\]"),
        ({"input": np.zeros((2, 4, 1))}, "has rank 3"),
        (
            {"input": np.zeros((2, 4)), "labels": np.zeros(3, np.int64)},
            "disagree on the number of samples",
        ),
        ({"input": np.zeros((2, 4)), "labels": np.zeros(2)}, "labels must be integer class ids"),
    ],
)
def test_bad_sample_files_are_data_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        read_file(path, _INFO, count=10)


def test_a_corrupt_sample_file_is_a_data_error(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="cannot read samples"):
        read_file(path, _INFO, count=10)


def test_pickled_sample_files_are_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read samples"):
        read_file(path, _INFO, count=10)
