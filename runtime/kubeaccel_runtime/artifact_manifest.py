"""The artifact manifest: its pydantic model, and the check every loader runs before loading.

This module imports only pydantic, the API models and the standard library, so the
inference server, the operator-facing tools and local runs can verify an artifact
without onnx, onnxruntime or torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from kubeaccel_api.constants import MANIFEST_FILE, REPORT_FILE, SHARD_FILE_TEMPLATE
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec, DType, ModelContract
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

_HASH_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[a-f0-9]{64}$")


class ArtifactInvalid(ValueError):
    """An artifact directory that must not be loaded; the message says why."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class TensorInfo(_Model):
    """One tensor at a model or shard boundary; -1 marks a dynamic dimension."""

    name: str = Field(min_length=1, description="Tensor name.")
    dtype: DType = Field(description="Element type.")
    shape: list[int] = Field(description="Dimensions; -1 is dynamic.")


class ShardInfo(_Model):
    """One pipeline shard: its file, digest and boundary tensors."""

    index: int = Field(ge=0, description="Position in the pipeline.")
    file: str = Field(description="File name inside the artifact directory.")
    sha256: str = Field(pattern=_SHA256.pattern, description="SHA-256 of the shard file.")
    bytes: int = Field(ge=0, description="Size of the shard file.")
    inputs: list[TensorInfo] = Field(description="Tensors the shard consumes.")
    outputs: list[TensorInfo] = Field(description="Tensors the shard produces.")


class EngineCache(_Model):
    """TensorRT engines the optimization Job built for the shards, shipped in the artifact.

    onnxruntime names each engine after the shard (file name and graph), its TensorRT,
    CUDA and onnxruntime versions and the GPU's compute capability (`_sm90`), so a pod on
    the same GPU class with the same image loads it instead of building one.
    """

    provider: str = Field(description="Execution provider the engines belong to.")
    dir: str = Field(description="Folder inside the artifact directory holding the engines.")
    gpu: str = Field(description="GPU the engines were built on (nvidia-smi name).")
    compute_capability: str | None = Field(
        default=None, description="Compute capability of that GPU, e.g. 9.0."
    )
    shard_options: list[dict[str, str]] = Field(
        description="Per shard, the provider options the engine was built with; the "
        "server must use exactly these (without the cache path) to load it."
    )
    max_batch: int | None = Field(
        default=None,
        ge=1,
        description="Largest batch of the engines' optimization profile (None: no explicit "
        "profile); a server that may run larger batches does not use them.",
    )
    files: dict[str, str] = Field(description="Engine cache file name -> its SHA-256.")


class Manifest(_Model):
    """manifest.json of an artifact directory (camelCase on disk)."""

    kubeaccel_version: str = Field(description="kubeaccel version that wrote the artifact.")
    artifact_id: str = Field(pattern=r"^[a-f0-9]{16}$", description="Artifact id.")
    model_name: str = Field(min_length=1, description="Resource name; the served model name.")
    source_sha256: str = Field(pattern=_SHA256.pattern, description="SHA-256 of the source.")
    execution_provider: str = Field(description="Provider the artifact was validated on.")
    inputs: list[TensorInfo] = Field(min_length=1, description="Whole-model inputs.")
    outputs: list[TensorInfo] = Field(min_length=1, description="Whole-model outputs.")
    shards: list[ShardInfo] = Field(min_length=1, description="Pipeline shards in order.")
    files: dict[str, str] = Field(description="Every file but the manifest -> its SHA-256.")
    spec: dict[str, Any] = Field(description="The AcceleratedModel spec, wire form.")
    engine_cache: EngineCache | None = Field(
        default=None, description="Prebuilt TensorRT engines, when the Job built them."
    )
    contract: ModelContract | None = Field(
        default=None,
        description=(
            "Inputs and outputs read from the source model; the server enforces them where "
            "the spec has no inputs/outputs. Absent in artifacts written before kubeaccel "
            "recorded it."
        ),
    )

    def parsed_spec(self) -> AcceleratedModelSpec:
        """The embedded spec as the API model."""
        return AcceleratedModelSpec.model_validate(self.spec)

    def to_json(self) -> str:
        """Serialize as written to disk (camelCase, stable key order)."""
        # Absent optional sections (no engine cache, no contract) stay out of the file.
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return json.dumps(data, indent=2) + "\n"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_name(name: str) -> bool:
    """A plain file name inside the artifact: no directories, no traversal."""
    parts = PurePosixPath(name).parts
    return len(parts) == 1 and name not in (".", "..") and "\\" not in name


def read_manifest(artifact_dir: Path) -> Manifest:
    """Parse manifest.json without checking any file digest."""
    path = artifact_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactInvalid(f"{artifact_dir}: no {MANIFEST_FILE} (not an artifact)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactInvalid(f"{path}: unreadable manifest: {exc}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ArtifactInvalid(f"{path}: invalid manifest at {where}: {first['msg']}") from None


def check_structure(manifest: Manifest, where: Path | str) -> None:
    """File names, shard numbering and shard wiring of a manifest (no file is read)."""
    for name in manifest.files:
        if not _safe_name(name) or name == MANIFEST_FILE:
            raise ArtifactInvalid(f"{where}: manifest lists an illegal file name {name!r}")
    if REPORT_FILE not in manifest.files:
        raise ArtifactInvalid(f"{where}: manifest does not list {REPORT_FILE}")
    for position, shard in enumerate(manifest.shards):
        expected = SHARD_FILE_TEMPLATE.format(index=position)
        if shard.index != position or shard.file != expected:
            raise ArtifactInvalid(
                f"{where}: shard {position} must be index {position} in {expected}, "
                f"found index {shard.index} in {shard.file!r}"
            )
        if manifest.files.get(shard.file) != shard.sha256:
            raise ArtifactInvalid(f"{where}: {shard.file} digest differs between shards and files")
    first, last = manifest.shards[0], manifest.shards[-1]
    if [t.name for t in first.inputs] != [t.name for t in manifest.inputs]:
        raise ArtifactInvalid(f"{where}: shard 0 inputs are not the model inputs")
    if [t.name for t in last.outputs] != [t.name for t in manifest.outputs]:
        raise ArtifactInvalid(f"{where}: the last shard's outputs are not the model outputs")
    for before, after in zip(manifest.shards, manifest.shards[1:], strict=False):
        if {t.name for t in before.outputs} != {t.name for t in after.inputs}:
            raise ArtifactInvalid(
                f"{where}: shard {before.index} outputs do not feed shard {after.index} inputs"
            )
    cache = manifest.engine_cache
    if cache is not None:
        if not _safe_name(cache.dir) or cache.dir in manifest.files:
            raise ArtifactInvalid(f"{where}: illegal engine cache folder {cache.dir!r}")
        for name in cache.files:
            if not _safe_name(name):
                raise ArtifactInvalid(f"{where}: engine cache lists an illegal file name {name!r}")
        if len(cache.shard_options) != len(manifest.shards):
            raise ArtifactInvalid(
                f"{where}: engine cache has options for {len(cache.shard_options)} shard(s), "
                f"the artifact has {len(manifest.shards)}"
            )


def listed_files(manifest: Manifest) -> list[tuple[str, str]]:
    """(path relative to the artifact, sha256) of every file the manifest vouches for."""
    out = sorted(manifest.files.items())
    cache = manifest.engine_cache
    if cache is not None:
        out += [(f"{cache.dir}/{name}", digest) for name, digest in sorted(cache.files.items())]
    return out


def verify_artifact(artifact_dir: Path) -> Manifest:
    """Check manifest structure and every file's SHA-256; return the manifest or raise.

    Raises:
        ArtifactInvalid: missing, malformed, tampered or incomplete artifact.
    """
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise ArtifactInvalid(f"{artifact_dir}: not a directory")
    manifest = read_manifest(artifact_dir)
    if artifact_dir.name != manifest.artifact_id:
        raise ArtifactInvalid(
            f"{artifact_dir}: directory name differs from artifactId {manifest.artifact_id}"
        )
    check_structure(manifest, artifact_dir)
    for name, expected in listed_files(manifest):
        path = artifact_dir / name
        if not path.is_file():
            raise ArtifactInvalid(f"{artifact_dir}: {name} is listed but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactInvalid(
                f"{path}: sha256 mismatch (manifest {expected}, file {actual}); "
                "the artifact was modified or corrupted"
            )
    for shard in manifest.shards:
        size = (artifact_dir / shard.file).stat().st_size
        if size != shard.bytes:
            raise ArtifactInvalid(
                f"{artifact_dir / shard.file}: {size} bytes, manifest says {shard.bytes}"
            )
    return manifest


def shard_path(artifact_dir: Path, manifest: Manifest, index: int) -> Path:
    """Path of shard `index`, after checking it exists in the manifest."""
    if not 0 <= index < len(manifest.shards):
        raise ArtifactInvalid(
            f"{artifact_dir}: no shard {index} (the artifact has {len(manifest.shards)})"
        )
    return Path(artifact_dir) / manifest.shards[index].file
