"""Read AcceleratedModel YAML files into validated models (the CLI's entry to the API)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from kubeaccel_api.v1alpha1 import AcceleratedModel
from kubeaccel_api.validation import InvalidResource, parse_resource


@dataclass(frozen=True)
class Problem:
    """One problem found in a file: where, and what."""

    file: Path
    document: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}[{self.document}]: {self.message}"


def load_documents(path: Path) -> list[object]:
    """Every YAML document of a file (empty documents skipped)."""
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def check_file(path: Path) -> tuple[list[AcceleratedModel], list[Problem]]:
    """Parse every resource in `path`; collect all problems instead of stopping at the first."""
    try:
        docs = load_documents(path)
    except OSError as exc:
        return [], [Problem(path, 0, f"cannot read file: {exc.strerror or exc}")]
    except yaml.YAMLError as exc:
        return [], [Problem(path, 0, f"not valid YAML: {exc}")]
    if not docs:
        return [], [Problem(path, 0, "no AcceleratedModel found in file")]
    resources: list[AcceleratedModel] = []
    problems: list[Problem] = []
    for i, doc in enumerate(docs):
        try:
            resources.append(parse_resource(doc))  # type: ignore[arg-type]
        except InvalidResource as exc:
            problems.extend(Problem(path, i, line) for line in exc.problems)
    return resources, problems


def load_one(path: Path) -> AcceleratedModel:
    """The single AcceleratedModel in `path`; InvalidResource lists every problem."""
    resources, problems = check_file(path)
    if problems:
        raise InvalidResource([str(p) for p in problems])
    if len(resources) != 1:
        raise InvalidResource(
            [f"{path}: expected exactly one AcceleratedModel, found {len(resources)}"]
        )
    return resources[0]
