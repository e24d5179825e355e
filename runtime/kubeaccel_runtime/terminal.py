"""Terminal output of every kubeaccel command: user and library text is shown verbatim.

Rich reads `[...]` as markup and `:name:` as emoji by default, so a path like `m[/x].yaml`
crashed a command and a pattern like `^[a-f0-9]{64}$` lost its brackets. Every command
prints through a console made here, which interprets nothing; colour comes only from
`Text` pieces the code builds itself (`say(err, FAIL, " ", message)`).
"""

from __future__ import annotations

from rich.console import Console
from rich.status import Status
from rich.text import Text

# (text, style) pieces for the start of a message.
OK = ("✓", "green")
FAIL = ("✗", "red")
ERROR = ("error", "red")
READY = ("ready", "green")

Piece = str | tuple[str, str]


def console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console that prints strings as they are: no markup, emoji codes or highlighting."""
    return Console(stderr=stderr, width=width, markup=False, emoji=False, highlight=False)


def text(*pieces: Piece) -> Text:
    """One line from plain strings (verbatim) and (text, style) pairs."""
    return Text.assemble(*pieces)


def say(out: Console, *pieces: Piece) -> None:
    """Print one message, never wrapped mid-word, never read as markup."""
    out.print(text(*pieces), soft_wrap=True)


def status(out: Console, *pieces: Piece) -> Status:
    """A spinner whose message is shown verbatim (rich's `status` parses a str as markup)."""
    return out.status(text(*pieces))
