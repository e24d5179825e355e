"""Import boundaries: the API stays light, the runtime never pulls the operator framework."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(import_line: str) -> set[str]:
    code = f"import sys; {import_line}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        (
            "import kubeaccel_api.v1alpha1, kubeaccel_api.crd, kubeaccel_api.validation",
            {"kopf", "onnxruntime", "torch", "kubernetes"},
        ),
        ("import kubeaccel_runtime, kubeaccel_runtime.cli", {"kopf", "kubernetes", "torch"}),
    ],
)
def test_importing_a_package_leaves_heavy_frameworks_out(
    statement: str, forbidden: set[str]
) -> None:
    assert _modules_after(statement) & forbidden == set()


def test_no_import_package_is_named_operator() -> None:
    import operator

    assert operator.__file__ is not None and "kubeaccel" not in operator.__file__
