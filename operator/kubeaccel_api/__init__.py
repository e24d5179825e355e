"""kubeaccel_api: the AcceleratedModel resource as pydantic models (imports pydantic + stdlib only)."""

from kubeaccel_api.version import __version__

__all__ = ["__version__"]
