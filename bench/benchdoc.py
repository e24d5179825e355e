"""docs/benchmarks.md: each benchmark script owns one `## ` section and rewrites only it."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section that starts with `heading` (or append it), leaving the rest alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text.rstrip() + "\n")


DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def loads(start: tuple[float, float, float], end: tuple[float, float, float]) -> str:
    """The 1/5/15-minute load averages at the start and the end of a run, for the record."""
    return (
        f"1/5/15-min load averages {'/'.join(f'{x:.1f}' for x in start)} at the start and "
        f"{'/'.join(f'{x:.1f}' for x in end)} at the end"
    )


def publish(
    heading: str, script: str, argv: list[str], seconds: float, body: list[str], write: bool
) -> None:
    """Print the section (the command that made it first) and, if asked, write it to the docs."""
    command = " ".join([f".venv/bin/python bench/{script}", *(shlex.quote(a) for a in argv)])
    section = "\n".join([heading, "", f"Command: `{command}` ({seconds:.0f} s).", "", *body])
    print(section)
    if write:
        write_section(DOCS, heading, section)
        print(f"wrote {DOCS}", file=sys.stderr)
