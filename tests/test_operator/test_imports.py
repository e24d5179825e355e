"""The operator process stays light: it never imports the runtime or any ML library."""

from __future__ import annotations

import subprocess
import sys


def test_the_operator_imports_neither_the_runtime_nor_ml_libraries() -> None:
    code = (
        "import sys, kubeaccel_operator.__main__, kubeaccel_operator.handlers;"
        "print(sorted(m for m in ('kubeaccel_runtime', 'torch', 'onnxruntime', 'onnx', 'numpy')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
