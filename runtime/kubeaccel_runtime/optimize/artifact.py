"""Write an artifact directory atomically: a temp dir in the same parent, then os.rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubeaccel_api.constants import MANIFEST_FILE, REPORT_FILE, SHARD_FILE_TEMPLATE
from kubeaccel_api.v1alpha1 import ModelContract
from kubeaccel_api.version import __version__

from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.artifact_manifest import (
    ArtifactInvalid,
    EngineCache,
    Manifest,
    ShardInfo,
    sha256_file,
    verify_artifact,
)
from kubeaccel_runtime.optimize.errors import ArtifactError
from kubeaccel_runtime.optimize.partition import Shard

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def existing(out_dir: Path, artifact_id: str) -> Manifest | None:
    """The manifest of a complete, untampered artifact with this id, else None."""
    target = out_dir / artifact_id
    if not target.exists():
        return None
    try:
        return verify_artifact(target)
    except ArtifactInvalid:
        return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with path.open("w") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_artifact(
    out_dir: Path,
    *,
    artifact_id: str,
    model_name: str,
    source_sha256: str,
    execution_provider: str,
    shards: Sequence[Shard],
    spec_wire: dict[str, Any],
    report: dict[str, Any],
    contract: ModelContract | None = None,
    force: bool = False,
    engines: tuple[Path, EngineCache] | None = None,
) -> Path:
    """Write shards, report.json and manifest.json into `<out_dir>/<artifact_id>/` atomically.

    `engines` is a folder of TensorRT engine files and the manifest entry describing them;
    the files are copied into the artifact and their digests recorded.

    A complete artifact with the same id is left alone unless `force`; an incomplete or
    tampered one is replaced. Nothing partial is ever visible under the final name.

    Raises:
        ArtifactError: the directory cannot be written.
    """
    target = out_dir / artifact_id
    if not force and existing(out_dir, artifact_id) is not None:
        return target
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{artifact_id}-", dir=out_dir))
    except OSError as exc:
        raise ArtifactError(f"cannot write under {out_dir}: {exc.strerror or exc}") from None
    try:
        files: dict[str, str] = {}
        infos: list[ShardInfo] = []
        for shard in shards:
            name = SHARD_FILE_TEMPLATE.format(index=shard.index)
            written = onnx_io.save(shard.model, tmp / name)
            for path in written:
                files[path.name] = sha256_file(path)
            infos.append(
                ShardInfo(
                    index=shard.index,
                    file=name,
                    sha256=files[name],
                    bytes=(tmp / name).stat().st_size,
                    inputs=shard.inputs,
                    outputs=shard.outputs,
                )
            )
        _write_json(tmp / REPORT_FILE, report)
        files[REPORT_FILE] = sha256_file(tmp / REPORT_FILE)
        engine_cache = _copy_engines(engines, tmp) if engines is not None else None
        manifest = Manifest(
            kubeaccel_version=__version__,
            artifact_id=artifact_id,
            model_name=model_name,
            source_sha256=source_sha256,
            execution_provider=execution_provider,
            inputs=list(shards[0].inputs),
            outputs=list(shards[-1].outputs),
            shards=infos,
            files=files,
            spec=spec_wire,
            engine_cache=engine_cache,
            contract=contract,
        )
        with (tmp / MANIFEST_FILE).open("w") as fh:
            fh.write(manifest.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if not force and existing(out_dir, artifact_id) is not None:
            # Another writer (a retried Job) finished the same artifact meanwhile: keep theirs.
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        _install(tmp, target, artifact_id)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"cannot write artifact {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _copy_engines(engines: tuple[Path, EngineCache], tmp: Path) -> EngineCache:
    """Copy the engine files into the artifact and record their digests."""
    source, entry = engines
    dest = tmp / entry.dir
    dest.mkdir()
    digests: dict[str, str] = {}
    for path in sorted(source.iterdir()):
        if path.is_file():
            shutil.copyfile(path, dest / path.name)
            digests[path.name] = sha256_file(dest / path.name)
    return entry.model_copy(update={"files": digests})


def _install(tmp: Path, target: Path, artifact_id: str) -> None:
    """Rename the finished temp dir into place, moving any previous one aside first."""
    if not target.exists():
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{artifact_id}-", dir=target.parent))
    os.rename(target, old / "previous")
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old / "previous", target)
        shutil.rmtree(old, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
