"""The server and the client stay free of torch and kopf (operator and optimizer only)."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "kubeaccel_runtime.serve",
    "kubeaccel_runtime.serve.app",
    "kubeaccel_runtime.serve.cli",
    "kubeaccel_runtime.serve.server",
    "kubeaccel_runtime.serve.session",
    "kubeaccel_runtime.client",
    "kubeaccel_runtime.loadgen",
]


def test_importing_the_server_leaves_torch_and_kopf_out_of_sys_modules() -> None:
    code = (
        "import sys\n"
        f"for m in {MODULES!r}: __import__(m)\n"
        "from kubeaccel_runtime.cli import main\n"
        "main.get_command(None, 'serve')\n"
        "bad = sorted(m for m in ('torch', 'kopf', 'onnxscript', 'kubernetes') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"
