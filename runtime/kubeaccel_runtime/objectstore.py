"""S3-compatible object storage: model sources and artifacts (the `s3` extra, MinIO's client).

The MinIO client is used because it fits every other extra: boto3's botocore pins
python-dateutil<3 while kubernetes 37 needs >=3, so `kubeaccel[operator,s3]` could never
be installed with boto3. Settings follow the AWS conventions every S3-compatible server
documents: AWS_ENDPOINT_URL (e.g. http://minio:9000), AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.

Artifacts are copied as a whole: an upload writes manifest.json last, so a reader that
finds the manifest finds every file it lists; a download checks every SHA-256 of the
manifest before the artifact directory appears under its final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kubeaccel_api.constants import MANIFEST_FILE

from kubeaccel_runtime.artifact_manifest import (
    ArtifactInvalid,
    Manifest,
    check_structure,
    listed_files,
    read_manifest,
    verify_artifact,
)

if TYPE_CHECKING:
    from minio import Minio

CHUNK = 1 << 20
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"


class ObjectStoreError(RuntimeError):
    """An object store could not be reached, refused a request, or lacks an object."""


@dataclass(frozen=True)
class S3Uri:
    """s3://bucket/key (key may be empty: the bucket's root)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """Split an s3:// URI; ValueError names what is wrong."""
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{uri}: expected s3://<bucket>/<key>")
        if parts.query or parts.fragment:
            raise ValueError(f"{uri}: an s3:// URI has no query or fragment")
        return cls(parts.netloc, parts.path.strip("/"))

    def child(self, name: str) -> S3Uri:
        """The key `name` below this one."""
        return S3Uri(self.bucket, f"{self.key}/{name}" if self.key else name)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class S3Settings:
    """Where the server is and how long to wait; credentials come from the environment."""

    endpoint: str = DEFAULT_ENDPOINT
    region: str | None = None
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls, timeout_s: float = 60.0) -> S3Settings:
        """$AWS_ENDPOINT_URL and $AWS_REGION (or $AWS_DEFAULT_REGION)."""
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        return cls(endpoint=endpoint, region=region, timeout_s=timeout_s)


def connect(settings: S3Settings) -> Minio:
    """A client for `settings`, with credentials from the AWS_* environment variables.

    Raises:
        ObjectStoreError: the `s3` extra is missing or the endpoint is not a plain URL.
    """
    try:
        import urllib3
        from minio import Minio
    except ImportError:
        raise ObjectStoreError(
            "S3 storage needs the MinIO client; install the s3 extra: pip install 'kubeaccel[s3]'"
        ) from None
    parts = urlsplit(settings.endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise ObjectStoreError(
            f"{ENDPOINT_ENV}={settings.endpoint!r}: expected http(s)://host[:port] without a path"
        )
    timeout = urllib3.Timeout(connect=settings.timeout_s, read=settings.timeout_s)
    retries = urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504))
    return Minio(
        parts.netloc,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        secure=parts.scheme == "https",
        region=settings.region,
        http_client=urllib3.PoolManager(timeout=timeout, retries=retries),
    )


def _errors() -> tuple[type[BaseException], ...]:
    from minio.error import MinioException
    from urllib3.exceptions import HTTPError

    return (MinioException, HTTPError, OSError)


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    return f"{code}: {message}" if code and message else str(exc) or type(exc).__name__


def iter_object(client: Minio, uri: S3Uri, max_bytes: int) -> Iterator[bytes]:
    """The object's bytes in chunks; ObjectStoreError if it is missing, unreadable or too large."""
    response: Any = None
    try:
        size = client.stat_object(uri.bucket, uri.key).size
        if size is not None and size > max_bytes:
            raise ObjectStoreError(f"{uri}: {size} bytes is larger than the {max_bytes}-byte limit")
        response = client.get_object(uri.bucket, uri.key)
        yield from response.stream(CHUNK)
    except _errors() as exc:
        raise ObjectStoreError(f"{uri}: cannot download: {_describe(exc)}") from None
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def exists(client: Minio, uri: S3Uri) -> bool:
    """Whether the object exists (other errors raise ObjectStoreError)."""
    from minio.error import S3Error

    try:
        client.stat_object(uri.bucket, uri.key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            return False
        raise ObjectStoreError(f"{uri}: {_describe(exc)}") from None
    except _errors() as exc:
        raise ObjectStoreError(f"{uri}: {_describe(exc)}") from None
    return True


def upload_artifact(client: Minio, artifact_dir: Path, parent: S3Uri) -> tuple[S3Uri, bool]:
    """Copy a verified artifact to `parent/<artifact-id>/`, manifest last.

    An artifact whose manifest is already there is complete (the manifest goes last) and is
    left alone: shards may be fetching it, and its id is a hash of what produced it.

    Returns:
        Where it is, and whether this call uploaded it.

    Raises:
        ArtifactInvalid: the local artifact does not verify (nothing is uploaded).
        ObjectStoreError: the upload failed (a partial upload has no manifest).
    """
    manifest = verify_artifact(artifact_dir)
    dest = parent.child(manifest.artifact_id)
    if exists(client, dest.child(MANIFEST_FILE)):
        return dest, False
    try:
        for name in [*(name for name, _ in listed_files(manifest)), MANIFEST_FILE]:
            client.fput_object(dest.bucket, dest.child(name).key, str(artifact_dir / name))
    except _errors() as exc:
        raise ObjectStoreError(f"{dest}: cannot upload: {_describe(exc)}") from None
    return dest, True


def download_artifact(client: Minio, src: S3Uri, dest_dir: Path) -> Manifest:
    """Fetch the artifact at `src` into `dest_dir` and check every SHA-256 of its manifest.

    `dest_dir` appears only once every file verified; an existing one that verifies is kept.

    Raises:
        ObjectStoreError: the store cannot be read or holds no manifest there.
        ArtifactInvalid: the manifest is malformed, names another artifact, or a digest differs.
    """
    if dest_dir.is_dir():
        try:
            return verify_artifact(dest_dir)
        except ArtifactInvalid:
            shutil.rmtree(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest_dir.parent)) / dest_dir.name
    try:
        staging.mkdir()
        _download(client, src.child(MANIFEST_FILE), staging / MANIFEST_FILE)
        listed = read_manifest(staging)
        check_structure(listed, str(src))  # safe names only, before any file is written
        for name, _ in listed_files(listed):
            _download(client, src.child(name), staging / name)
        manifest = verify_artifact(staging)
        staging.rename(dest_dir)
        return manifest
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)


def _download(client: Minio, uri: S3Uri, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # the engine cache has its own folder
    with path.open("wb") as out:
        for chunk in iter_object(client, uri, max_bytes=2**62):
            out.write(chunk)
