"""The one place the kubeaccel version is written (hatch reads it too)."""

__version__ = "0.1.0"
