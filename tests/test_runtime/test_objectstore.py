"""S3 storage against a real S3-compatible server (moto, started here): sources and artifacts.

The flow is the operator's with `storage.type: s3`: the Job optimizes and publishes the
artifact, a shard pod's init container fetches it (checking every SHA-256), the server
serves it. Credentials and the endpoint come from the AWS_* variables, as in the pods.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kubeaccel_runtime import objectstore
from kubeaccel_runtime.artifact_manifest import verify_artifact
from kubeaccel_runtime.cli import main
from kubeaccel_runtime.objectstore import ObjectStoreError, S3Settings, S3Uri

sys.path.insert(0, str(Path(__file__).parent))
from s3_server import CREDENTIALS, running_server

FAST = ["--threads", "1", "--bench-iterations", "3", "--no-rss"]


# --------------------------------------------------------------------------- pure


def test_s3_uris_split_into_bucket_and_key() -> None:
    uri = S3Uri.parse("s3://models/team/a/")
    assert (uri.bucket, uri.key) == ("models", "team/a")
    assert str(uri.child("x.onnx")) == "s3://models/team/a/x.onnx"
    assert str(S3Uri.parse("s3://models").child("m")) == "s3://models/m"


@pytest.mark.parametrize("bad", ["http://b/k", "s3:///key", "models/key", "s3://b/k?x=1"])
def test_a_malformed_s3_uri_is_refused_with_the_uri(bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace("?", r"\?")):
        S3Uri.parse(bad)


@pytest.mark.parametrize("endpoint", ["minio:9000", "ftp://minio", "http://minio:9000/base"])
def test_an_endpoint_that_is_not_a_plain_url_is_refused(endpoint: str) -> None:
    with pytest.raises(ObjectStoreError, match="AWS_ENDPOINT_URL"):
        objectstore.connect(S3Settings(endpoint=endpoint))


def test_settings_follow_the_aws_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert S3Settings.from_env() == S3Settings("http://minio:9000", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert S3Settings.from_env().endpoint == "https://s3.amazonaws.com"


# --------------------------------------------------------------------------- real server


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on loopback for the whole session."""
    with running_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket, with the AWS_* variables pointing at the server; yields the client."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    client = objectstore.connect(S3Settings.from_env())
    name = f"kubeaccel-{uuid.uuid4().hex[:12]}"
    client.make_bucket(name)
    client.bucket = name  # the tests' handle on it
    return client


def _invoke(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    output = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    return result


def _put(client: Any, key: str, data: bytes) -> None:
    client.put_object(client.bucket, key, io.BytesIO(data), len(data))


@pytest.fixture
def s3_spec(
    tmp_path: Path, bucket: Any, opt_models: Any, opt_spec_writer: Callable[..., Path]
) -> Path:
    """A spec whose model source is an object in the bucket (sha256 pinned)."""
    blob = opt_models.mlp(seed=5).SerializeToString()
    _put(bucket, "sources/mlp.onnx", blob)
    spec = opt_spec_writer(
        tmp_path, "unused.onnx", hashlib.sha256(blob).hexdigest(), name="tiny",
        optimization={"partition": {"shards": 2}},
    )  # fmt: skip
    text = spec.read_text().replace("file://unused.onnx", f"s3://{bucket.bucket}/sources/mlp.onnx")
    spec.write_text(text)
    return spec


def _optimize_and_publish(spec: Path, out: Path, destination: str) -> Path:
    """`kubeaccel optimize --publish` as the Job runs it; the local artifact directory."""
    done = _invoke("optimize", "--spec", str(spec), "--out", str(out), *FAST,
                   "--publish", destination)  # fmt: skip
    assert done.exit_code == 0, done.stderr
    local = Path(done.stdout.strip().splitlines()[-1])
    assert f"✓ published {destination}/{local.name}" in done.stderr
    return local


@pytest.mark.slow
def test_the_job_flow_publishes_and_a_shard_fetches_a_verified_artifact(
    tmp_path: Path, bucket: Any, s3_spec: Path
) -> None:
    destination = f"s3://{bucket.bucket}/kubeaccel/tiny"
    local = _optimize_and_publish(s3_spec, tmp_path / "job", destination)
    aid = local.name

    pod = tmp_path / "pod" / "tiny" / aid
    fetched = _invoke("fetch-artifact", f"{destination}/{aid}", str(pod))
    assert fetched.exit_code == 0, fetched.stderr
    manifest = verify_artifact(pod)
    assert len(manifest.shards) == 2
    assert {p.name for p in pod.iterdir()} == {*manifest.files, "manifest.json"}
    for name in manifest.files:
        assert (pod / name).read_bytes() == (local / name).read_bytes()
    assert [p.name for p in pod.parent.iterdir()] == [aid]  # no staging folder left

    again = _invoke("fetch-artifact", f"{destination}/{aid}", str(pod))
    assert again.exit_code == 0, again.stderr

    # A second Job for the same artifact leaves the published copy alone.
    before = bucket.stat_object(bucket.bucket, f"kubeaccel/tiny/{aid}/manifest.json").etag
    rerun = _invoke("optimize", "--spec", str(s3_spec), "--out", str(tmp_path / "job2"), *FAST,
                    "--publish", destination)  # fmt: skip
    assert rerun.exit_code == 0, rerun.stderr
    assert f"✓ already published (kept as it is) {destination}/{aid}" in rerun.stderr
    assert bucket.stat_object(bucket.bucket, f"kubeaccel/tiny/{aid}/manifest.json").etag == before


@pytest.mark.slow
def test_a_tampered_object_is_refused_and_leaves_no_artifact(
    tmp_path: Path, bucket: Any, s3_spec: Path
) -> None:
    destination = f"s3://{bucket.bucket}/arts"
    aid = _optimize_and_publish(s3_spec, tmp_path / "job", destination).name
    shard = bytearray(
        b"".join(
            objectstore.iter_object(bucket, S3Uri(bucket.bucket, f"arts/{aid}/shard-1.onnx"), 2**30)
        )
    )
    shard[-1] ^= 0xFF
    _put(bucket, f"arts/{aid}/shard-1.onnx", bytes(shard))

    pod = tmp_path / "pod" / aid
    refused = _invoke("fetch-artifact", f"{destination}/{aid}", str(pod))
    assert refused.exit_code == 1
    assert "shard-1.onnx: sha256 mismatch" in refused.stderr
    assert not pod.exists() and list(pod.parent.iterdir()) == []


@pytest.mark.slow
def test_a_missing_artifact_or_manifest_is_a_clear_error(tmp_path: Path, bucket: Any) -> None:
    missing = _invoke(
        "fetch-artifact", f"s3://{bucket.bucket}/none/0123456789abcdef", str(tmp_path / "a")
    )
    assert missing.exit_code == 1
    assert "manifest.json: cannot download: NoSuchKey" in missing.stderr
    _put(bucket, "bad/0123456789abcdef/manifest.json", json.dumps({"files": {}}).encode())
    bad = _invoke(
        "fetch-artifact", f"s3://{bucket.bucket}/bad/0123456789abcdef", str(tmp_path / "b")
    )
    assert bad.exit_code == 1 and "invalid manifest" in bad.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_manifest_naming_a_path_outside_the_artifact_writes_nothing(
    tmp_path: Path, bucket: Any
) -> None:
    manifest = {
        "kubeaccelVersion": "0.1.0", "artifactId": "0123456789abcdef", "modelName": "m",
        "sourceSha256": "0" * 64, "executionProvider": "CPUExecutionProvider",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 4]}],
        "shards": [{"index": 0, "file": "shard-0.onnx", "sha256": "0" * 64, "bytes": 1,
                    "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
                    "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 4]}]}],
        "files": {"shard-0.onnx": "0" * 64, "report.json": "0" * 64, "../escape": "0" * 64},
        "spec": {},
    }  # fmt: skip
    _put(bucket, "evil/0123456789abcdef/manifest.json", json.dumps(manifest).encode())
    dest = tmp_path / "pods" / "0123456789abcdef"
    refused = _invoke("fetch-artifact", f"s3://{bucket.bucket}/evil/0123456789abcdef", str(dest))
    assert refused.exit_code == 1 and "illegal file name '../escape'" in refused.stderr
    assert not (tmp_path / "pods" / "escape").exists() and not dest.exists()


@pytest.mark.slow
def test_publish_fails_before_optimizing_on_a_bad_destination_and_after_on_a_missing_bucket(
    tmp_path: Path, bucket: Any, s3_spec: Path
) -> None:
    bad = _invoke("optimize", "--spec", str(s3_spec), "--out", str(tmp_path / "o"),
                  "--publish", "s3:/nope")  # fmt: skip
    assert bad.exit_code == 1 and "(InvalidArguments)" in bad.stderr
    assert not (tmp_path / "o").exists()
    gone = _invoke("optimize", "--spec", str(s3_spec), "--out", str(tmp_path / "o"), *FAST,
                   "--publish", "s3://no-such-bucket-kubeaccel/x")  # fmt: skip
    assert gone.exit_code == 1
    assert "(PublishFailed)" in gone.stderr and "NoSuchBucket" in gone.stderr


@pytest.mark.slow
def test_a_model_source_in_s3_is_checked_against_its_sha256(
    tmp_path: Path, bucket: Any, s3_spec: Path
) -> None:
    _put(bucket, "sources/mlp.onnx", b"not the model that was pinned")
    done = _invoke("optimize", "--spec", str(s3_spec), "--out", str(tmp_path / "o"), *FAST)
    assert done.exit_code == 1
    assert "sha256" in done.stderr and "mismatch" in done.stderr.lower()


@pytest.mark.slow
def test_an_artifact_with_tensorrt_engines_round_trips_with_its_engine_folder(
    tmp_path: Path, bucket: Any, opt_models: Any
) -> None:
    from kubeaccel_runtime.artifact_manifest import EngineCache
    from kubeaccel_runtime.optimize.artifact import write_artifact
    from kubeaccel_runtime.optimize.partition import partition
    from kubeaccel_runtime.trt import ENGINE_CACHE_DIR, TENSORRT

    aid, sha = "fedcba9876543210", "b" * 64
    built = tmp_path / "built"
    built.mkdir()
    (built / "TensorrtExecutionProvider_TRTKernel_graph_1_0_sm90.engine").write_bytes(b"e0" * 64)
    cache = EngineCache(
        provider=TENSORRT, dir=ENGINE_CACHE_DIR, gpu="NVIDIA H200", compute_capability="9.0",
        shard_options=[{"trt_fp16_enable": "True"}] * 2, max_batch=64, files={},
    )  # fmt: skip
    local = write_artifact(
        tmp_path / "out", artifact_id=aid, model_name="tiny", source_sha256=sha,
        execution_provider=TENSORRT, shards=partition(opt_models.mlp(seed=1), 2, "memory"),
        spec_wire={"source": {"uri": "file://m.onnx", "sha256": sha},
                   "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 64]}]},
        report={"summary": {"artifactId": aid}}, engines=(built, cache),
    )  # fmt: skip
    dest, uploaded = objectstore.upload_artifact(bucket, local, S3Uri(bucket.bucket, "trt"))
    assert uploaded
    pod = tmp_path / "pod" / aid
    manifest = objectstore.download_artifact(bucket, dest, pod)
    assert manifest.engine_cache is not None and manifest.engine_cache.files
    engine = pod / ENGINE_CACHE_DIR / "TensorrtExecutionProvider_TRTKernel_graph_1_0_sm90.engine"
    assert engine.read_bytes() == b"e0" * 64
