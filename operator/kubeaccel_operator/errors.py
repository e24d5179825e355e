"""Domain errors and the one policy that maps them to kopf retries.

Invalid input is permanent (status says why; no retry storm). Anything the cluster can
fix by itself or an administrator can fix without touching the resource (a missing
claim, a conflict, 5xx, throttling, RBAC) is temporary and retried after a delay.
"""

from __future__ import annotations

from typing import NoReturn

import kopf


class OperatorError(Exception):
    """Base of every error the operator raises on purpose."""


class InvalidSpec(OperatorError):
    """The resource breaks a rule; `problems` are `field.path: message` lines."""

    reason = "InvalidSpec"

    def __init__(self, problems: list[str], *, reason: str | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        if reason is not None:
            self.reason = reason


class NotReady(OperatorError):
    """A dependency (e.g. an existing claim named in the spec) is not there yet."""


class ApiError(OperatorError):
    """A Kubernetes API call failed with `status` (0 when no response came back)."""

    def __init__(self, status: int, message: str, *, kind: str = "", name: str = "") -> None:
        target = f"{kind}/{name}: " if kind or name else ""
        super().__init__(f"{target}HTTP {status}: {message}")
        self.status = status
        self.kind = kind
        self.name = name

    @property
    def temporary(self) -> bool:
        """Conflicts, throttling, server errors, RBAC and network errors can heal."""
        return self.status in (0, 401, 403, 404, 408, 409, 429) or self.status >= 500


class ForeignObject(ApiError):
    """An object with a child's name exists but is not owned by this resource."""

    def __init__(self, kind: str, name: str, owner: str) -> None:
        super().__init__(
            409,
            f"exists and is not owned by AcceleratedModel {owner}; rename or delete it",
            kind=kind,
            name=name,
        )


def raise_for_kopf(exc: OperatorError, *, delay: float) -> NoReturn:
    """Re-raise `exc` as kopf.PermanentError or kopf.TemporaryError(delay)."""
    if isinstance(exc, InvalidSpec):
        raise kopf.PermanentError(str(exc)) from exc
    if isinstance(exc, ApiError) and not exc.temporary:
        # 400/422: the API server rejected a manifest built from this spec; retrying the
        # same spec gives the same answer.
        raise kopf.PermanentError(str(exc)) from exc
    raise kopf.TemporaryError(str(exc), delay=delay) from exc
