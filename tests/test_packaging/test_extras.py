"""Every combination of the package's extras can be installed (pip resolves it).

`kubeaccel[operator,s3]` once never finished resolving: kubernetes 37 needs
python-dateutil>=3 and every botocore pins <3, so pip backtracked through every boto3
release. Resolving is monotone: a solution for a set of requirements also satisfies any
subset of them, so resolving the largest allowed combinations proves every smaller one.
The allowed combinations are all of them except cpu together with gpu: both ship the
`onnxruntime` package directory, so they are exclusive by design (TESTING.md).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
EXCLUSIVE = frozenset({"cpu", "gpu"})
# pip normally resolves these in well under a minute; a conflict backtracks far longer.
RESOLVE_TIMEOUT_S = 420


def allowed_combinations() -> list[frozenset[str]]:
    """Every non-empty set of extras that does not hold both cpu and gpu."""
    names = sorted(EXTRAS)
    return [
        frozenset(combo)
        for size in range(1, len(names) + 1)
        for combo in itertools.combinations(names, size)
        if not set(combo) >= EXCLUSIVE
    ]


def largest(combos: list[frozenset[str]]) -> list[frozenset[str]]:
    """The combinations no other one contains."""
    return [c for c in combos if not any(c < other for other in combos)]


def requirements(combo: frozenset[str]) -> list[str]:
    """What `pip install "kubeaccel[<combo>]"` asks for, without building the project."""
    return [*PROJECT["dependencies"], *(r for name in sorted(combo) for r in EXTRAS[name])]


def test_every_allowed_combination_is_inside_one_of_the_two_largest() -> None:
    combos = allowed_combinations()
    assert len(combos) == 2 ** len(EXTRAS) - 1 - 2 ** (len(EXTRAS) - 2)
    tops = largest(combos)
    assert sorted(map(sorted, tops)) == sorted(
        [sorted(set(EXTRAS) - {"gpu"}), sorted(set(EXTRAS) - {"cpu"})]
    )
    assert all(any(c <= top for top in tops) for c in combos)


@pytest.mark.slow  # needs the package index; about a minute per combination here
@pytest.mark.parametrize(
    "combo",
    [*largest(allowed_combinations()), frozenset({"operator", "s3"})],
    ids=lambda c: ",".join(sorted(c)),
)
def test_pip_resolves_the_combination(combo: frozenset[str], tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [
        *(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"),
        *("--quiet", "--report", str(report), *requirements(combo)),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip did not resolve [{','.join(sorted(combo))}] in {RESOLVE_TIMEOUT_S} s")
    assert done.returncode == 0, done.stderr[-3000:]
    installed = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for requirement in requirements(combo):
        name = requirement.split(";")[0].split("[")[0]
        for sep in ("==", ">=", "<", "~="):
            name = name.split(sep)[0]
        assert name.strip().lower().replace("_", "-") in {n.replace("_", "-") for n in installed}, (
            requirement
        )
