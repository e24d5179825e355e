"""kubeaccel_runtime: the `kubeaccel` CLI, the optimization Job and the inference server."""

from kubeaccel_api import __version__

__all__ = ["__version__"]
