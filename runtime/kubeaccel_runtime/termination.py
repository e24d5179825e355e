"""The container's last words: what Kubernetes shows as a terminated container's message.

The optimization Job writes its JSON summary (or error) here, and `kubeaccel serve` writes
why a shard cannot be served before it exits, so the operator can put the reason into
the resource's status without reading logs.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_ENV = "KUBEACCEL_TERMINATION_LOG"
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_LIMIT = 4096


def termination_log_path() -> Path | None:
    """$KUBEACCEL_TERMINATION_LOG, else /dev/termination-log when it exists."""
    env = os.environ.get(TERMINATION_ENV)
    if env:
        return Path(env)
    return TERMINATION_LOG if TERMINATION_LOG.exists() else None


# Dropped in this order when the summary is over the limit (the contract also sits in
# the manifest, which the server reads; the candidates in report.json).
DROPPABLE = ("candidates", "contract")


def compact(payload: dict[str, Any]) -> str:
    """Compact JSON under the termination-message limit (candidates, then contract dropped)."""
    text = json.dumps(payload, separators=(",", ":"))
    for key in DROPPABLE:
        if len(text.encode()) <= TERMINATION_LIMIT:
            break
        payload = {k: v for k, v in payload.items() if k != key}
        text = json.dumps(payload, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_LIMIT:
        text = text.encode()[: TERMINATION_LIMIT - 1].decode(errors="ignore")
    return text


def write_termination_log(payload: dict[str, Any]) -> None:
    """Write the summary (or error) where Kubernetes reads the container's last words."""
    path = termination_log_path()
    if path is None:
        return
    # Best effort: the exit code and stderr still tell the story.
    with contextlib.suppress(OSError):
        path.write_text(compact(payload))
