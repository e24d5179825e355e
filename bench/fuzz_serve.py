"""Fuzz a running `kubeaccel serve` with schemathesis, from the OpenAPI document it serves.

    .venv/bin/python bench/fuzz_serve.py --examples 1700 --write

Builds a small model with three inputs (FP32 [-1,4] in [-1000, 1000], INT64 [-1,1] in
[0, 10], BOOL [-1,4]) and two outputs, starts `kubeaccel serve` on it as its own process,
loads the server's /openapi.json, and for every operation sends up to --examples
schema-valid ("positive") and up to --examples schema-violating ("negative") requests
drawn by schemathesis (Hypothesis underneath). Every response goes through schemathesis'
checks. What must hold:
  - no 5xx at all, and no error logged by the server;
  - every positive request is accepted (2xx): the document describes the real contract;
  - every response matches the document (status code, content type, body schema).
Negative requests the server accepts are counted, not failed: the schema lists inputs and
outputs in one order and enumerates batch sizes, so a reordered list violates the schema
yet is a valid request. Bounded: at most 2 x examples requests per operation, loopback only.
With --st-examples N the same server then faces schemathesis' own command line
(`st run <url>/openapi.json --checks all`: its coverage, fuzzing and stateful phases, every
check, rejected schema-violating requests included), which must report no issue.
Prints a JSON summary; --write records it in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "test_runtime" / "serve"))

from benchdoc import write_section  # noqa: E402
from serve_fixtures import build_two_inputs, free_port, spec_for, write_artifact  # noqa: E402

SECTION = "## Fuzzing the runtime API"
INPUTS = [
    {"name": "x", "dtype": "float32", "shape": [-1, 4], "range": {"min": -1000, "max": 1000}},
    {"name": "k", "dtype": "int64", "shape": [-1, 1], "range": {"min": 0, "max": 10}},
    {"name": "mask", "dtype": "bool", "shape": [-1, 4]},
]
LIMITS = {"maxBatch": 8, "maxRequestBytes": 65536}
# Every check but negative_data_rejection: accepted negative cases are only counted (above).
REQUIRED = (
    not_a_server_error,
    positive_data_acceptance,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)


@dataclass
class Tally:
    """What the fuzzer sent and what came back."""

    requests: int = 0
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    by_operation: collections.Counter[str] = field(default_factory=collections.Counter)
    positive: int = 0
    positive_rejected: int = 0
    negative: int = 0
    negative_accepted: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    call_seconds: float = 0.0

    def record(self, case: Any, response: requests.Response, mode: GenerationMode) -> None:
        """Count one exchange and run the checks on it."""
        self.requests += 1
        self.by_status[response.status_code] += 1
        self.by_operation[case.operation.label] += 1
        ok = 200 <= response.status_code < 300
        if mode is GenerationMode.POSITIVE:
            self.positive += 1
            self.positive_rejected += not ok
            if not ok:
                self.examples.setdefault(
                    "valid request rejected",
                    f"{case.operation.label} {case.path_parameters} {case.body!r:.200} "
                    f"-> {response.status_code}: {response.text[:300]}",
                )
        else:
            self.negative += 1
            self.negative_accepted += ok
        try:
            case.validate_response(response, checks=list(REQUIRED))
        except Exception as exc:  # schemathesis raises one group with every failed check
            name = type(exc).__name__
            for failure in getattr(exc, "exceptions", [exc]):
                key = getattr(failure, "title", None) or type(failure).__name__ or name
                self.failures[key] += 1
                self.examples.setdefault(
                    key, f"{case.operation.label} -> {response.status_code}: {response.text[:300]}"
                )

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "requests": self.requests,
            "status": {str(k): v for k, v in sorted(self.by_status.items())},
            "server_errors": sum(v for k, v in self.by_status.items() if k >= 500),
            "positive": self.positive,
            "positive_rejected": self.positive_rejected,
            "negative": self.negative,
            "negative_accepted": self.negative_accepted,
            "check_failures": dict(self.failures),
            "failure_examples": self.examples,
            "operations": dict(sorted(self.by_operation.items())),
            "seconds_in_requests": round(self.call_seconds, 1),
        }


class Server:
    """`kubeaccel serve` on one artifact, as a separate process on a loopback port."""

    def __init__(self, artifact: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [
            *(sys.executable, "-m", "kubeaccel_runtime.cli", "serve"),
            *("--artifacts", str(artifact), "--host", "127.0.0.1", "--port", str(self.port)),
            *("--threads", "1", "--drain-seconds", "0"),
        ]
        self._out = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until /v2/health/ready says yes (or fail with the server's log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        """SIGTERM, wait, and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        return code

    def logged_errors(self) -> list[str]:
        """Log lines at level error or with a traceback."""
        lines = []
        for line in self.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                lines.append(line)  # not our JSON logs: a crash or a print
                continue
            if entry.get("level") in ("error", "critical") or "exc" in entry:
                lines.append(line)
        return lines


def fuzz(url: str, examples: int, seed: int, tally: Tally) -> list[str]:
    """Send positive and negative cases for every operation; return the skipped pairs."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    session = requests.Session()
    skipped = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _send_cases(operation, mode, session, examples, seed, tally)
            except Unsatisfiable:  # e.g. no negative case exists for a GET without parameters
                skipped.append(f"{operation.label} ({mode.value})")
    return skipped


def _send_cases(
    operation: Any,
    mode: GenerationMode,
    session: requests.Session,
    examples: int,
    seed: int,
    tally: Tally,
) -> None:
    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: nothing raises here
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        started = time.perf_counter()
        response = case.call(session=session, timeout=30)
        tally.call_seconds += time.perf_counter() - started
        tally.record(case, response, mode)

    send()


def st_run(url: str, examples: int, seed: int, workdir: Path) -> dict[str, Any]:
    """schemathesis' CLI with every check against the server; its exit code and summary.

    It runs in `workdir`: the CLI keeps a .schemathesis/ cache in its working directory.
    """
    cmd = [
        str(Path(sys.executable).with_name("st")),
        *("run", f"{url}/openapi.json", "--checks", "all", "--workers", "1"),
        *("--max-examples", str(examples), "--seed", str(seed)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=workdir)
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    cases = next((line for line in lines if " generated, " in line), "no summary")
    shown = ["st", *cmd[1:2], "<server>/openapi.json", *cmd[3:]]
    return {"command": shlex.join(shown), "exit_code": done.returncode, "cases": cases}


def markdown(result: dict[str, Any], command: str) -> str:
    """The docs/benchmarks.md section."""
    status = ", ".join(f"{k}: {v}" for k, v in result["status"].items())
    failures = result["check_failures"] or "none"
    st = result.get("st_run")
    cli = (
        f"\nThen schemathesis' own command line against the same server, `{st['command']}`: "
        f"{st['cases']} (exit code {st['exit_code']}).\n"
        if st
        else ""
    )
    return f"""{SECTION}

`{command}` ({result["machine"]}; {result["seconds"]:.0f} s).

schemathesis {result["schemathesis"]} drew requests from the `/openapi.json` that a running
`kubeaccel serve` publishes for its model (three inputs: FP32 [-1,4] ranged, INT64 [-1,1]
ranged, BOOL [-1,4]; two outputs; maxBatch 8) and sent them over loopback: up to
{result["examples"]} schema-valid and {result["examples"]} schema-violating requests per operation.

| figure | value |
|---|---|
| requests | {result["requests"]} |
| server errors (5xx) | **{result["server_errors"]}** |
| errors the server logged | {len(result["logged_errors"])} |
| schema-valid requests | {result["positive"]} |
| schema-valid requests not accepted (non-2xx) | **{result["positive_rejected"]}** |
| schema-violating requests | {result["negative"]} |
| schema-violating requests accepted | {result["negative_accepted"]} |
| responses breaking the document (status, content type, schema) | {failures} |
| status codes | {status} |
{cli}
Schema-violating requests that are accepted are valid requests outside what JSON Schema can
say: the schema lists inputs and outputs in the model's order (the server takes any order)
and enumerates batch sizes (the element count of `data` depends on the shape).
"""


def main() -> int:
    """Build the model, serve it, fuzz it, print the figures; exit 1 if a rule broke."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1700, help="cases per operation and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--st-examples", type=int, default=0, help="then run `st run --checks all` (0: skip)"
    )
    parser.add_argument("--write", action="store_true", help="record in docs/benchmarks.md")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubeaccel-fuzz-") as tmp:
        root = Path(tmp)
        spec = spec_for(INPUTS, limits=LIMITS)
        artifact = write_artifact(root / "artifacts", build_two_inputs(), spec, name="fuzz")
        server = Server(artifact, root / "serve.log")
        tally = Tally()
        try:
            server.wait_ready()
            skipped = fuzz(server.url, args.examples, args.seed, tally)
            cli = (
                st_run(server.url, args.st_examples, args.seed, root) if args.st_examples else None
            )
        finally:
            exit_code = server.stop()
        logged = server.logged_errors()
    result = {
        **tally.summary(),
        "examples": args.examples,
        "seed": args.seed,
        "skipped": skipped,
        "logged_errors": logged[:20],
        "server_exit_code": exit_code,
        "st_run": cli,
        "seconds": time.monotonic() - started,
        "schemathesis": schemathesis.SCHEMATHESIS_VERSION,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    if args.write:
        command = "python " + shlex.join(["bench/fuzz_serve.py", *sys.argv[1:]])
        write_section(ROOT / "docs" / "benchmarks.md", SECTION, markdown(result, command))
    broken = (
        result["server_errors"]
        or result["positive_rejected"]
        or result["check_failures"]
        or logged
        or exit_code != 0
        or (cli is not None and cli["exit_code"] != 0)
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
