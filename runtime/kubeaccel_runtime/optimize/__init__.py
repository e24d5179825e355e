"""`kubeaccel optimize`: fetch and verify a model, run passes, gate accuracy, partition, write.

Public entry points: `optimize_spec` (pipeline), `verify_artifact` (artifact_manifest).
"""

from kubeaccel_runtime.artifact_manifest import Manifest, verify_artifact

__all__ = ["Manifest", "verify_artifact"]
