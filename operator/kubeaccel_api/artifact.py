"""The artifact id: which optimization a spec asks for, computed without any IO."""

from __future__ import annotations

import hashlib
import json

from kubeaccel_api.target import serving_target
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_api.version import __version__

ARTIFACT_ID_LENGTH = 16


def artifact_id(spec: AcceleratedModelSpec) -> str:
    """Hash of the source digest, the optimization spec, the serving target and the version.

    Only these re-optimize: other runtime, contract or storage changes keep the artifact.
    The target (cpu, or GPU provider + GPU product) is in because candidates are measured
    and TensorRT engines built on it. Unverified sources hash their URI, since no digest
    is known up front.
    """
    source_key = spec.source.sha256 or f"{spec.source.uri}#unverified"
    payload = {
        "source": {"digest": source_key, "format": spec.source.format.value},
        "optimization": spec.optimization.to_wire(),
        "target": serving_target(spec).to_wire(),
        "version": __version__,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:ARTIFACT_ID_LENGTH]
