"""Re-verify a served artifact's digests while the server runs.

The digests are checked once before loading; this keeps checking them, so a file changed
on the volume afterwards (a flipped byte, a replaced shard, a deleted artifact) takes the
server out of service instead of going unnoticed until the next restart. The session in
memory is the one that was verified, so answers given before the change is seen are
still those of the verified model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from kubeaccel_runtime.artifact_manifest import ArtifactInvalid, verify_artifact

log = logging.getLogger("kubeaccel.serve")


def artifact_problem(artifact_dir: Path) -> str | None:
    """Why the artifact no longer verifies, or None while every digest matches."""
    try:
        verify_artifact(artifact_dir)
    except ArtifactInvalid as exc:
        return str(exc)
    except OSError as exc:  # the volume itself went away or cannot be read
        return f"{artifact_dir}: cannot read the artifact: {exc}"
    return None


class IntegrityWatch:
    """A daemon thread that re-verifies `artifact_dir` every `interval_s` seconds.

    On the first failed check it calls `on_invalid(reason)` once and stops.
    """

    def __init__(
        self, artifact_dir: Path, interval_s: float, on_invalid: Callable[[str], None]
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.artifact_dir = artifact_dir
        self.interval_s = interval_s
        self.on_invalid = on_invalid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verify-artifact", daemon=True)

    def start(self) -> None:
        """Start checking in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop checking (the current check, if any, finishes)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            problem = artifact_problem(self.artifact_dir)
            if problem is not None:
                log.error("artifact changed on the volume; refusing to serve: %s", problem)
                self.on_invalid(problem)
                return
