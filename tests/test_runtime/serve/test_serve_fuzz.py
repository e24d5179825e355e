"""schemathesis fuzzes a running `kubeaccel serve` from its own /openapi.json (bench/fuzz_serve.py).

The benchmark sends >= 10k requests and records the figures; this runs the same script on
a small budget: no 5xx, every schema-valid request accepted, every response as documented,
and `st run --checks all` (schema-violating requests rejected too) reports no issue.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def test_a_schema_driven_fuzzer_gets_no_server_error_and_every_valid_request_accepted(
    tmp_path: Path,
) -> None:
    out = tmp_path / "fuzz.json"
    cmd = [
        *(sys.executable, "bench/fuzz_serve.py", "--examples", "12", "--st-examples", "5"),
        *("--json", str(out)),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert done.returncode == 0, json.dumps(result, indent=1)
    assert result["server_errors"] == 0 and result["logged_errors"] == []
    assert result["positive"] > 0 and result["positive_rejected"] == 0
    assert result["negative"] > 0
    assert result["check_failures"] == {}
    infer = [op for op in result["operations"] if op.endswith("/infer")]
    assert len(infer) == 2 and all(result["operations"][op] >= 12 for op in infer)
    # schemathesis' own CLI (coverage phase, every check) found no issue either.
    assert result["st_run"]["exit_code"] == 0, result["st_run"]
