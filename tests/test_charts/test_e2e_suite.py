"""The e2e suite is opt-in: without a cluster it skips cleanly, with one reason, exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_e2e_suite_skips_every_test_with_one_reason_without_a_cluster(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    # A kubeconfig path that does not exist: no cluster, whatever this machine has.
    env["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "e2e", "-m", "e2e", "-rs", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ skipped in [\d.]+s", summary), summary
    assert int(summary.split()[0]) >= 10, "the e2e suite lost its tests"
    reasons = set(re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", out, re.M))
    assert len(reasons) == 1, reasons
    assert reasons.pop().startswith(f"e2e: no cluster: no kubeconfig at {env['KUBECONFIG']}; ")


def test_the_default_test_run_does_not_collect_the_e2e_suite() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert config["testpaths"] == ["tests"]
    assert any(m.startswith("e2e:") for m in config["markers"])
