"""Which providers the server asks for and really gets, per `executionProvider` choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubeaccel_api.v1alpha1 import ExecutionProvider

from kubeaccel_runtime.serve.session import (
    LoadError,
    SessionConfig,
    choose_providers,
    create_session,
)

CHOICES = (
    ExecutionProvider.AUTO,
    ExecutionProvider.CUDA,
    ExecutionProvider.TENSORRT,
    ExecutionProvider.CPU,
)


def provider_matrix(model_path: Path, threads: int) -> list[dict[str, Any]]:
    """For each choice: the providers requested and `session.get_providers()`, as the server
    creates its session (the same function), or the error it reports."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    rows: list[dict[str, Any]] = []
    for choice in CHOICES:
        row: dict[str, Any] = {"executionProvider": choice.value, "offered": available}
        try:
            row["requested"] = choose_providers(choice, available)
            session, in_use, _ = create_session(
                model_path, SessionConfig(provider=choice, intra_op_threads=threads)
            )
            row["sessionProviders"] = list(session.get_providers())
            row["inUse"] = in_use
            row["error"] = None
        except LoadError as exc:
            row["inUse"] = None
            row["error"] = str(exc)
        rows.append(row)
    return rows
