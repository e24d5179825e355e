"""Pure reading of pod status: why a container cannot run, and how the last one ended.

The operator never changes pods; it reads them (list + watch) so that a shard that
cannot start, or an optimizer that was killed, shows up in the resource's status with the
kubelet's own words instead of leaving the user to look at pods.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# kubelet waiting reasons that no retry fixes without a change (image, config, command).
IMAGE_PULL_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
        "SignatureValidationFailed",
    }
)
START_REASONS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "PreStartHookError",
        "PostStartHookError",
    }
)
# A reason the container itself wrote (kubeaccel serve / optimize JSON) may become a
# condition reason only if it has the shape Kubernetes requires of one.
_REASON = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
MESSAGE_TAIL_LINES = 10
MESSAGE_MAX_CHARS = 2000


@dataclass(frozen=True)
class Termination:
    """How a container ended, as the kubelet reports it."""

    exit_code: int | None = None
    reason: str = ""  # Completed, Error, OOMKilled, ContainerCannotRun, ...
    message: str = ""  # the termination message (ours is JSON)
    finished_at: str = ""

    @property
    def signal_name(self) -> str | None:
        """SIGKILL/SIGTERM/... when the exit code says a signal ended the process."""
        code = self.exit_code
        if code is None or not 128 < code < 128 + 65:
            return None
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            return None

    def written_reason(self) -> str | None:
        """The `reason` the container wrote in a JSON termination message, if usable."""
        try:
            doc = json.loads(self.message)
        except ValueError:
            return None
        reason = doc.get("reason") if isinstance(doc, dict) else None
        ok = isinstance(reason, str) and _REASON.match(reason) is not None
        return reason if ok else None


@dataclass(frozen=True)
class PodProblem:
    """Why a pod's container cannot serve; `fatal` when waiting will not fix it."""

    pod: str
    reason: str
    message: str
    fatal: bool


def message_tail(message: str) -> str:
    """The useful end of a termination message: the `error` of a JSON one, or its last lines."""
    text = message.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        text = parsed["error"].strip()
    lines = text.splitlines()[-MESSAGE_TAIL_LINES:]
    return "\n".join(lines)[-MESSAGE_MAX_CHARS:]


def termination_of(status: Mapping[str, Any]) -> Termination | None:
    """The current or last termination of one containerStatuses entry."""
    for key in ("state", "lastState"):
        term = (status.get(key) or {}).get("terminated")
        if term:
            code = term.get("exitCode")
            return Termination(
                exit_code=int(code) if code is not None else None,
                reason=str(term.get("reason") or ""),
                message=str(term.get("message") or ""),
                finished_at=str(term.get("finishedAt") or ""),
            )
    return None


def last_termination(pods: Iterable[Mapping[str, Any]], container: str) -> Termination | None:
    """The most recent termination of `container` among `pods` (state or lastState)."""
    best: Termination | None = None
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != container:
                continue
            for key in ("state", "lastState"):
                found = termination_of({key: status.get(key)})
                if found is not None and (best is None or found.finished_at > best.finished_at):
                    best = found
    return best


def describe_exit(term: Termination) -> str:
    """`exited with code 1`, `was killed (exit code 137, SIGKILL)`, `was OOMKilled ...`."""
    sig = term.signal_name
    if sig is not None:
        return f"was killed (exit code {term.exit_code}, {sig})"
    text = f"exited with code {term.exit_code}"
    if term.reason and term.reason not in ("Error", "Completed"):
        text += f" ({term.reason})"
    return text


def _memory_limit(pod: Mapping[str, Any], container: str) -> str | None:
    for spec in (pod.get("spec") or {}).get("containers") or []:
        if spec.get("name") == container:
            limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
            return str(limit) if limit else None
    return None


def _crash(pod: Mapping[str, Any], status: Mapping[str, Any]) -> PodProblem | None:
    term = termination_of(status)
    if term is None or term.exit_code in (None, 0):
        return None
    pod_name = str(pod["metadata"]["name"])
    container = str(status.get("name") or "")
    if term.reason == "OOMKilled":
        limit = _memory_limit(pod, container)
        within = f" of {limit}" if limit else ""
        return PodProblem(
            pod_name,
            "OOMKilled",
            f"container {container} ran out of memory (OOMKilled at its limit{within}); "
            "raise spec.runtime.resources.memory",
            fatal=True,
        )
    text = f"container {container} {describe_exit(term)}"
    tail = message_tail(term.message)
    if tail:
        text += f": {tail}"
    return PodProblem(pod_name, term.written_reason() or "CrashLoop", text, fatal=True)


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """Why this pod does not serve, if its status tells; None while it is fine or starting."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None  # going away, or evicted: its ReplicaSet replaces it
    name = str(meta.get("name") or "")
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for cs in statuses:
        if cs.get("ready"):
            continue
        waiting = (cs.get("state") or {}).get("waiting") or {}
        why = str(waiting.get("reason") or "")
        said = str(waiting.get("message") or why)
        if why in IMAGE_PULL_REASONS:
            return PodProblem(
                name, "ImagePullFailed", f"cannot pull image {cs.get('image')}: {said}", fatal=True
            )
        if why in START_REASONS:
            return PodProblem(
                name, "ContainerStartFailed", f"container {cs.get('name')}: {said}", fatal=True
            )
        crash = _crash(pod, cs)
        if crash is not None:
            return crash
    for cond in status.get("conditions") or []:
        unschedulable = cond.get("reason") == "Unschedulable" and cond.get("status") == "False"
        if cond.get("type") == "PodScheduled" and unschedulable:
            message = str(cond.get("message") or "no node fits the pod")
            return PodProblem(name, "Unschedulable", message[:MESSAGE_MAX_CHARS], fatal=False)
    return None
