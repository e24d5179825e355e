"""Refuse to run with both `onnxruntime` and `onnxruntime-gpu` installed.

Both distributions ship the same `onnxruntime/` package directory: with both present,
whichever was installed last wins file by file, and removing one breaks the other. The
`cpu` and `gpu` extras are meant to be exclusive; this makes a mixed install fail loudly
at import time instead of running on a silently broken build.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

# Distributions that provide the top-level `onnxruntime` package.
ORT_DISTRIBUTIONS = frozenset(
    {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"}
)


class ConflictingOnnxRuntime(ImportError):
    """More than one onnxruntime distribution is installed."""


def installed_onnxruntimes(path: Sequence[str] | None = None) -> list[str]:
    """Names of the installed distributions that provide `onnxruntime` (sorted)."""
    dists = (
        metadata.distributions(path=list(path)) if path is not None else metadata.distributions()
    )
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in dists}
    return sorted(names & ORT_DISTRIBUTIONS)


def check_single_onnxruntime(path: Sequence[str] | None = None) -> None:
    """Raise ConflictingOnnxRuntime when more than one onnxruntime distribution is installed."""
    found = installed_onnxruntimes(path)
    if len(found) > 1:
        keep = "onnxruntime-gpu" if "onnxruntime-gpu" in found else found[0]
        raise ConflictingOnnxRuntime(
            f"several onnxruntime builds are installed ({', '.join(found)}); they overwrite each "
            f"other's files. Uninstall all of them, then install exactly one: "
            f"pip uninstall -y {' '.join(found)} && pip install {keep} "
            "(or pip install 'kubeaccel[runtime,cpu]' / 'kubeaccel[runtime,gpu]')"
        )


check_single_onnxruntime()
