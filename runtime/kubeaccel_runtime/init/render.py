"""Pure: a Draft -> commented YAML that parses back to exactly the Draft's document.

PyYAML cannot write comments, so the block structure is written here and every value is
written by PyYAML in flow style (it quotes what needs quoting). `render` parses its own
output back and compares, so a rendering bug can never hand the user a different spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from kubeaccel_runtime.init.draft import Draft, Note

INDENT = 2
_NO_WRAP = 1 << 30


class RenderError(RuntimeError):
    """The YAML written does not parse back to the document (a bug in this module)."""


def flow(value: Any) -> str:
    """One value in YAML flow style, quoted where needed, on one line."""
    # Dumping a one-item list avoids the document-end marker PyYAML adds to bare scalars.
    text = yaml.safe_dump([value], default_flow_style=True, width=_NO_WRAP, sort_keys=False)
    return text.strip()[1:-1]


def _comment_lines(lines: Sequence[str], pad: str) -> list[str]:
    # A line break inside a comment (a file name can hold one) would end the comment.
    return [f"{pad}# {' '.join(line.splitlines())}".rstrip() for line in lines]


def _with_inline(text: str, note: Note) -> str:
    return f"{text}  # {note.inline}" if note.inline else text


def _block(value: Mapping[str, Any], path: str, depth: int, notes: Mapping[str, Note]) -> list[str]:
    pad = " " * (INDENT * depth)
    out: list[str] = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        note = notes.get(where, Note())
        out += _comment_lines(note.above, pad)
        if isinstance(item, Mapping) and item:
            out.append(_with_inline(f"{pad}{key}:", note))
            out += _block(item, where, depth + 1, notes)
        elif isinstance(item, list) and item and all(isinstance(i, Mapping) for i in item):
            out.append(_with_inline(f"{pad}{key}:", note))
            out += [f"{pad}{' ' * INDENT}- {flow(i)}" for i in item]
        else:
            out.append(_with_inline(f"{pad}{key}: {flow(item)}", note))
    return out


def render(draft: Draft, header: Sequence[str] = ()) -> str:
    """The draft as commented YAML, `header` lines as a leading comment.

    Raises:
        RenderError: the text would not parse back to the draft's document.
    """
    lines = [*_comment_lines(header, ""), *_block(draft.doc, "", 0, draft.notes)]
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != draft.doc:
        raise RenderError("the rendered YAML does not parse back to the spec")
    return text
