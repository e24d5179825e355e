"""Fixtures of the operator tests; helper modules are imported by name from this folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest's importlib mode adds no test folder to sys.path; the helpers have unique names.
sys.path.insert(0, str(Path(__file__).parent))
# Support shared by several test folders (tests/support).
sys.path.insert(0, str(Path(__file__).parents[1] / "support"))

from kubeaccel_operator.settings import Settings


@pytest.fixture
def cfg() -> Settings:
    """Default operator settings (no environment involved)."""
    return Settings()
