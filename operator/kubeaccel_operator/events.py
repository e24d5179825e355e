"""The Kubernetes Events reconcile decides to post (the handlers post them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: EventType
    reason: str
    message: str
