"""Validate raw resources and render every problem as `<field path>: <message>`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kubeaccel_api.constants import API_VERSION, KIND
from kubeaccel_api.v1alpha1 import AcceleratedModel


class InvalidResource(ValueError):
    """A resource that breaks one or more rules; `problems` lists `path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_errors(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[str]:
    """Render pydantic errors as field-path lines, naming the child field of cross-field rules."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *err["loc"])
        if err["type"] == "field_rule":
            ctx = err.get("ctx") or {}
            lines.append(f"{_path((*loc, *str(ctx['field']).split('.')))}: {ctx['rule']}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{_path(loc)}: unknown field")
        elif err["type"] == "missing":
            lines.append(f"{_path(loc)}: is required")
        else:
            lines.append(f"{_path(loc)}: {err['msg']}")
    return lines


def parse_resource(obj: Mapping[str, Any]) -> AcceleratedModel:
    """Parse one raw AcceleratedModel; raise InvalidResource with every problem found."""
    if not isinstance(obj, Mapping):
        raise InvalidResource(["<document>: expected a mapping (an AcceleratedModel object)"])
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        raise InvalidResource(
            [
                f"apiVersion/kind: expected {API_VERSION} {KIND}, got "
                f"{obj.get('apiVersion')!r} {obj.get('kind')!r}"
            ]
        )
    try:
        return AcceleratedModel.model_validate(dict(obj))
    except ValidationError as exc:
        raise InvalidResource(format_errors(exc)) from None
