"""A real S3-compatible server for the tests: moto's server, in its own virtualenv.

moto depends on boto3, whose botocore pins python-dateutil<3 while kubernetes 37 needs
>=3, so it cannot share the project's environment; `.venv-s3/` at the repository root is
created on first use (about a minute with a warm pip cache, a few on a fresh machine).
The server listens on loopback only and is stopped when the test session ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-s3"
# moto's S3 alone plus the web framework its server runs on (moto[server] would bring
# every AWS service's dependencies).
MOTO = ("moto[s3]==5.2.5", "flask>=3,<4", "flask-cors>=5,<7")
SERVER = VENV / "bin" / "moto_server"
# moto accepts any key pair (it does not check signatures); these are only sent.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kubeaccel-test", "AWS_SECRET_ACCESS_KEY": "kubeaccel-secret"}


def ensure_server_installed() -> Path:
    """The moto_server executable, installing it into .venv-s3 the first time."""
    if not SERVER.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        done = subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", *MOTO],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if done.returncode != 0 or not SERVER.exists():
            raise RuntimeError(f"cannot install {MOTO} into {VENV}:\n{done.stderr[-3000:]}")
    return SERVER


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def running_server(log: Path) -> Iterator[str]:
    """Start moto's S3 server on a free loopback port; yield its endpoint URL."""
    server = ensure_server_installed()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{url}/moto-api/", timeout=1)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = log.read_text()[-2000:]
                        raise RuntimeError(f"moto did not start:\n{tail}") from None
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
