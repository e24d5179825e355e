"""Resolve, fetch and verify the model source before anything reads it.

Every scheme streams the bytes into a private work directory while hashing them; the digest
is compared with the spec before the file is parsed, and a mismatching copy is deleted.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from kubeaccel_runtime.onnx_io import is_safe_relative
from kubeaccel_runtime.optimize.errors import DigestMismatch, SourceError

CHUNK = 1 << 20
DEFAULT_PVC_ROOT = Path("/mnt/sources")
PVC_ROOT_ENV = "KUBEACCEL_PVC_ROOT"


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on remote fetches."""

    max_bytes: int = 8 * 1024**3
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Location:
    """Where a URI points: a local path (file, pvc) or a remote URL (http, s3)."""

    scheme: str
    uri: str
    path: Path | None = None


@dataclass(frozen=True)
class Fetched:
    """A fetched file in the work directory, with the SHA-256 of its bytes."""

    uri: str
    path: Path
    sha256: str
    bytes: int
    verified: bool
    companions: dict[str, str] = field(default_factory=dict)


def pvc_root() -> Path:
    """Where the operator mounts claims (`$KUBEACCEL_PVC_ROOT`, default /mnt/sources)."""
    return Path(os.environ.get(PVC_ROOT_ENV, str(DEFAULT_PVC_ROOT)))


def resolve(uri: str, *, cwd: Path, pvc: Path) -> Location:
    """Turn a source URI into a Location (no IO).

    `file://rel/path` is relative to `cwd`, `file:///abs/path` absolute;
    `pvc://<claim>/<path>` is `<pvc>/<claim>/<path>` and may not escape the claim.

    Raises:
        SourceError: unknown scheme or a path that escapes its root.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or not rest:
        raise SourceError(f"{uri}: not a URI (expected file://, http(s)://, s3:// or pvc://)")
    if scheme == "file":
        path = Path(rest) if rest.startswith("/") else cwd / rest
        return Location("file", uri, path)
    if scheme == "pvc":
        claim, _, inner = rest.partition("/")
        if not claim or not inner or not is_safe_relative(inner) or not is_safe_relative(claim):
            raise SourceError(f"{uri}: expected pvc://<claim>/<relative path> without '..'")
        return Location("pvc", uri, pvc / claim / inner)
    if scheme in ("http", "https", "s3"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise SourceError(f"{uri}: missing host/bucket")
        return Location(scheme, uri)
    raise SourceError(f"{uri}: unsupported scheme {scheme!r} (file, http, https, s3, pvc)")


def _copy(chunks: Iterator[bytes], dest: Path, limits: FetchLimits, uri: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as out:
        for chunk in chunks:
            size += len(chunk)
            if size > limits.max_bytes:
                raise SourceError(f"{uri}: larger than the {limits.max_bytes}-byte limit")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _read(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def _local_chunks(path: Path, uri: str) -> Iterator[bytes]:
    if not path.is_file():
        raise SourceError(f"{uri}: no such file {path}")
    try:
        with path.open("rb") as fh:
            yield from _read(fh)
    except OSError as exc:
        raise SourceError(f"{uri}: cannot read {path}: {exc.strerror or exc}") from None


def _http_chunks(uri: str, limits: FetchLimits) -> Iterator[bytes]:
    request = urllib.request.Request(uri, headers={"User-Agent": "kubeaccel-optimizer"})
    try:
        with urllib.request.urlopen(request, timeout=limits.timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limits.max_bytes:
                raise SourceError(
                    f"{uri}: {length} bytes is larger than the {limits.max_bytes}-byte limit"
                )
            yield from _read(response)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"{uri}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"{uri}: cannot download: {reason}") from None


def _s3_chunks(uri: str, limits: FetchLimits) -> Iterator[bytes]:
    from kubeaccel_runtime import objectstore

    try:
        client = objectstore.connect(objectstore.S3Settings.from_env(limits.timeout_s))
        yield from objectstore.iter_object(client, objectstore.S3Uri.parse(uri), limits.max_bytes)
    except (objectstore.ObjectStoreError, ValueError) as exc:
        raise SourceError(str(exc)) from None


def fetch(
    uri: str,
    dest: Path,
    *,
    expected_sha256: str | None,
    cwd: Path,
    pvc: Path,
    limits: FetchLimits,
) -> Fetched:
    """Copy the source to `dest` while hashing it; check the digest before returning.

    Raises:
        SourceError: unresolvable or unreadable source, or over the size limit.
        DigestMismatch: the bytes do not hash to `expected_sha256` (nothing is kept).
    """
    location = resolve(uri, cwd=cwd, pvc=pvc)
    if location.path is not None:
        chunks = _local_chunks(location.path, uri)
    elif location.scheme == "s3":
        chunks = _s3_chunks(uri, limits)
    else:
        chunks = _http_chunks(uri, limits)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest, size = _copy(chunks, dest, limits, uri)
        if expected_sha256 is not None and digest != expected_sha256:
            raise DigestMismatch(uri, expected_sha256, digest)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return Fetched(uri, dest, digest, size, expected_sha256 is not None)


def copy_companions(fetched: Fetched, names: list[str], *, cwd: Path, pvc: Path) -> Fetched:
    """Copy external-data files next to a local source into the work directory.

    The spec's digest covers the .onnx file only; companions are hashed and recorded.

    Raises:
        SourceError: a remote source (external data needs file:// or pvc://), or a missing file.
    """
    if not names:
        return fetched
    location = resolve(fetched.uri, cwd=cwd, pvc=pvc)
    if location.path is None:
        raise SourceError(
            f"{fetched.uri}: the model keeps weights in external files ({', '.join(names)}); "
            "use a file:// or pvc:// source so they can be read next to it"
        )
    digests: dict[str, str] = {}
    for name in names:
        if not is_safe_relative(name):
            raise SourceError(f"{fetched.uri}: external data path {name!r} escapes its directory")
        src = location.path.parent / name
        dst = fetched.path.parent / name
        if not src.is_file():
            raise SourceError(
                f"{fetched.uri}: the model keeps its weights in {name!r}, which is missing: "
                f"copy it next to the model (expected at {src})"
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        digest, _ = _copy(
            _local_chunks(src, fetched.uri), dst, FetchLimits(max_bytes=2**62), fetched.uri
        )
        digests[name] = digest
    return Fetched(
        fetched.uri, fetched.path, fetched.sha256, fetched.bytes, fetched.verified, digests
    )
