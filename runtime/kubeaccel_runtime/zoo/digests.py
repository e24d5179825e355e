"""Keep the `sha256:` of example YAML files equal to the model files they point at.

Only the one line holding the old digest changes; comments, order and layout of the file
stay byte for byte. No torch here: `--sync-only` runs without training anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeaccel_runtime.artifact_manifest import sha256_file

FILE_SCHEME = "file://"
_DIGEST_LINE = re.compile(
    r"^(?P<head>[ \t]*(?:-[ \t]+)?sha256:[ \t]*)(?P<q>[\"']?)(?P<digest>[0-9a-f]{64})(?P=q)"
    r"(?P<tail>[ \t]*(?:#.*)?)$"
)


class DigestSyncError(Exception):
    """A YAML file cannot be checked or rewritten; the file is left untouched."""


@dataclass(frozen=True)
class DigestChange:
    """What syncing one YAML file did."""

    yaml_file: Path
    model_file: Path
    old: str | None
    new: str
    rewritten: bool
    note: str = ""


def local_path(uri: str, base: Path) -> Path | None:
    """The file a `file://` URI names (relative URIs against `base`); None for other schemes."""
    if not uri.startswith(FILE_SCHEME):
        return None
    rest = uri[len(FILE_SCHEME) :]
    path = Path(rest)
    return path if path.is_absolute() else base / path


def _sources(text: str, yaml_file: Path) -> list[tuple[str, str | None]]:
    """(source uri, source sha256 or None) of every AcceleratedModel document in `text`."""
    try:
        docs: list[Any] = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise DigestSyncError(f"{yaml_file}: not valid YAML: {exc}") from exc
    found = []
    for doc in docs:
        source = doc.get("spec", {}).get("source") if isinstance(doc, dict) else None
        if isinstance(source, dict) and isinstance(source.get("uri"), str):
            digest = source.get("sha256")
            found.append((source["uri"], digest if isinstance(digest, str) else None))
    return found


def rewrite_digest(text: str, old: str, new: str) -> str:
    """`text` with the value of every `sha256: <old>` line replaced by `new`.

    Raises DigestSyncError when no such line exists (e.g. a flow-style mapping), so a
    digest is never silently left stale.
    """
    lines = text.splitlines(keepends=True)
    hits = 0
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        match = _DIGEST_LINE.match(body)
        if match and match["digest"] == old:
            ending = line[len(body) :]
            quote = match["q"]
            lines[i] = f"{match['head']}{quote}{new}{quote}{match['tail']}{ending}"
            hits += 1
    if hits == 0:
        raise DigestSyncError(f"no line of the form 'sha256: {old}' to rewrite")
    return "".join(lines)


def stale_digests(examples_dir: Path, model_files: list[Path], base: Path) -> list[DigestChange]:
    """The `sha256:` lines of `examples_dir/*.yaml` that differ from their model file.

    Reads only; a DigestChange here has `rewritten=False` and `new` = the file's digest.
    """
    digests = {p.resolve(): sha256_file(p) for p in model_files if p.is_file()}
    stale = []
    for yaml_file in sorted(examples_dir.glob("*.yaml")):
        text = yaml_file.read_text(encoding="utf-8")
        for uri, old in _sources(text, yaml_file):
            target = local_path(uri, base)
            if target is None:
                continue
            new = digests.get(target.resolve())
            if new is not None and old != new:
                stale.append(DigestChange(yaml_file, target, old, new, False))
    return stale


def sync_file(yaml_file: Path, digests: dict[Path, str], base: Path) -> list[DigestChange]:
    """Rewrite the digests in one YAML file whose source is one of `digests`' files."""
    try:
        text = yaml_file.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DigestSyncError(f"{yaml_file}: cannot read: {exc}") from exc
    changes: list[DigestChange] = []
    new_text = text
    for uri, old in _sources(text, yaml_file):
        target = local_path(uri, base)
        if target is None:
            continue
        new = digests.get(target.resolve())
        if new is None:
            continue
        if old is None:
            changes.append(DigestChange(yaml_file, target, None, new, False, "no sha256 line"))
        elif old == new:
            changes.append(DigestChange(yaml_file, target, old, new, False))
        else:
            try:
                new_text = rewrite_digest(new_text, old, new)
            except DigestSyncError as exc:
                raise DigestSyncError(f"{yaml_file}: {exc}") from exc
            changes.append(DigestChange(yaml_file, target, old, new, True))
    if new_text != text:
        tmp = yaml_file.with_name(yaml_file.name + ".tmp")
        tmp.write_bytes(new_text.encode("utf-8"))
        tmp.replace(yaml_file)
    return changes


def sync_examples(
    examples_dir: Path, model_files: list[Path], base: Path
) -> tuple[list[DigestChange], list[str]]:
    """Sync every `examples_dir/*.yaml` against the given (existing) model files.

    Returns the changes and one problem per file that could not be synced; such a file is
    left as it was and the others are still synced.
    """
    digests = {p.resolve(): sha256_file(p) for p in model_files if p.is_file()}
    changes: list[DigestChange] = []
    problems: list[str] = []
    for yaml_file in sorted(examples_dir.glob("*.yaml")):
        try:
            changes.extend(sync_file(yaml_file, digests, base))
        except DigestSyncError as exc:
            problems.append(str(exc))
    return changes, problems
