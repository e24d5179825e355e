"""Every kubeaccel command shows user and library text verbatim: brackets are not markup.

Names, paths and values below carry rich markup (`[red]`, `[/x]`, `[link=...]`), a regex
class (`[0-9a-f]`) and an emoji code (`:smile:`). Each command must print them exactly as
given, exit with its documented status, and never show a traceback.
"""

from __future__ import annotations

import ast
import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from kubeaccel_runtime.cli import main
from kubeaccel_runtime.zoo.cli import main as zoo_main

# A field name, URL path or (nested) folder; every piece means something to rich.
TRICKY = "a[red]b[/red][/x]c[link=https://e.x/]d[/link][0-9a-f]e:smile:f"
# The same pieces without a slash, for a single file name.
FILE = "m[red]b[link=https:x]c[0-9a-f]d:smile:e"
RUNTIME = Path(__file__).parents[2] / "runtime" / "kubeaccel_runtime"
FAST = ["--threads", "1", "--bench-iterations", "3", "--no-rss"]


def _invoke(command: Any, args: list[str], **kwargs: Any) -> Result:
    result = CliRunner().invoke(command, args, **kwargs)
    output = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output and "MarkupError" not in output, output
    return result


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _spec(name: str = "ok", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"uri": "file://model.onnx", "sha256": "0" * 64},
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 64]}],
        **spec,
    }
    return {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": name},
        "spec": body,
    }


@pytest.fixture
def tricky_dir(tmp_path: Path) -> Path:
    """A folder whose path is full of markup (its slashes make nested folders)."""
    folder = tmp_path / TRICKY
    folder.mkdir(parents=True)
    return folder


def test_validate_shows_paths_field_names_and_patterns_verbatim(tricky_dir: Path) -> None:
    good = tricky_dir / "good.yaml"
    good.write_text(yaml.safe_dump(_spec()))
    bad = tricky_dir / "bad.yaml"
    bad.write_text(yaml.safe_dump(_spec(source={"uri": "file://m.onnx", "sha256": "XYZ"})))
    unknown = tricky_dir / "unknown.yaml"
    unknown.write_text(yaml.safe_dump(_spec(**{TRICKY: 1})))

    ok = _invoke(main, ["validate", "-f", str(good)])
    assert ok.exit_code == 0 and f"✓ {good}: ok" in ok.stdout
    failed = _invoke(main, ["validate", "-f", str(bad), "-f", str(unknown)])
    assert failed.exit_code == 1
    assert f"✗ {bad}[0]: spec.source.sha256: String should match pattern '^[a-f0-9]{{64}}$'" in (
        failed.stderr
    )
    assert f"✗ {unknown}[0]: spec.{TRICKY}: unknown field" in failed.stderr


def test_validate_as_a_process_shows_a_bracketed_path_without_a_traceback(
    tricky_dir: Path,
) -> None:
    missing = tricky_dir / "[/x].yaml"
    cmd = [sys.executable, "-m", "kubeaccel_runtime.cli", "validate", "-f", str(missing)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == f"✗ {missing}[0]: cannot read file: No such file or directory"


def test_crd_write_names_the_files_it_wrote_verbatim(tricky_dir: Path) -> None:
    result = _invoke(main, ["crd", "--write", "--root", str(tricky_dir)])
    assert result.exit_code == 0
    assert f"wrote {tricky_dir}/crds/" in result.stdout


def test_optimize_shows_a_bad_spec_and_a_missing_source_verbatim(tricky_dir: Path) -> None:
    unknown = tricky_dir / "unknown.yaml"
    unknown.write_text(yaml.safe_dump(_spec(**{TRICKY: 1})))
    bad = _invoke(main, ["optimize", "--spec", str(unknown), "--out", str(tricky_dir / "o")])
    assert bad.exit_code == 1
    assert "✗ optimize failed (InvalidSpec): invalid spec:" in bad.stderr
    assert f"{unknown}[0]: spec.{TRICKY}: unknown field" in bad.stderr

    absent = tricky_dir / "absent.yaml"
    absent.write_text(
        yaml.safe_dump(_spec(source={"uri": f"file://{FILE}.onnx", "sha256": "0" * 64}))
    )
    missing = _invoke(main, ["optimize", "--spec", str(absent), "--out", str(tricky_dir / "o")])
    assert missing.exit_code == 1
    assert f"{FILE}.onnx" in missing.stderr


@pytest.mark.slow
def test_optimize_progress_tables_and_artifact_path_are_verbatim(
    tricky_dir: Path, opt_models: Any, opt_spec_writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tricky_dir)
    model = f"{FILE}.onnx"
    (tricky_dir / model).write_bytes(opt_models.mlp(seed=1).SerializeToString())
    digest = hashlib.sha256((tricky_dir / model).read_bytes()).hexdigest()
    samples = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    np.savez(tricky_dir / f"{FILE}.npz", input=samples)
    validation = {"validation": {"uri": f"file://{FILE}.npz"}}
    spec = opt_spec_writer(tricky_dir, model, digest, name="tiny", optimization=validation)
    out = tricky_dir / "out[/x]"
    result = _invoke(main, ["optimize", "--spec", str(spec), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().startswith(f"{out}/")
    assert f"✓ data validation: file({FILE}.npz)" in result.stderr
    assert "tiny → artifact" in result.stderr


def test_serve_shows_an_unreadable_spec_verbatim(tricky_dir: Path) -> None:
    spec = tricky_dir / "bad.yaml"
    spec.write_text(yaml.safe_dump(_spec(**{TRICKY: 1})))
    result = _invoke(main, ["serve", "--artifacts", str(tricky_dir), "--spec", str(spec)])
    assert result.exit_code == 1
    assert f"{spec}[0]: spec.{TRICKY}: unknown field" in result.stderr


def test_serve_logs_a_bracketed_artifact_path_verbatim(tricky_dir: Path) -> None:
    artifacts = tricky_dir / "[/x]"
    cmd = [
        *(sys.executable, "-m", "kubeaccel_runtime.cli", "serve"),
        *("--artifacts", str(artifacts), "--port", str(_closed_port())),
        *("--fail-exit-seconds", "0", "--drain-seconds", "0"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    logs = [json.loads(line) for line in done.stderr.splitlines()]
    failure = next(entry for entry in logs if entry["msg"].startswith("cannot serve"))
    assert failure["artifacts"] == str(artifacts)
    assert str(artifacts) in failure["msg"]


def test_run_shows_a_bad_spec_and_a_missing_source_verbatim(tricky_dir: Path) -> None:
    unknown = tricky_dir / "unknown.yaml"
    unknown.write_text(yaml.safe_dump(_spec(**{TRICKY: 1})))
    work = str(tricky_dir / "work")
    bad = _invoke(main, ["run", "-f", str(unknown), "--workdir", work])
    assert bad.exit_code == 1
    assert f"✗ {unknown}[0]: spec.{TRICKY}: unknown field" in bad.stderr

    absent = tricky_dir / "absent.yaml"
    absent.write_text(
        yaml.safe_dump(_spec(source={"uri": f"file://{FILE}.onnx", "sha256": "0" * 64}))
    )
    missing = _invoke(main, ["run", "-f", str(absent), "--workdir", work])
    assert missing.exit_code == 1
    assert "error: " in missing.stderr and f"{FILE}.onnx" in missing.stderr


def test_stop_names_an_unknown_run_and_its_workdir_verbatim(tricky_dir: Path) -> None:
    result = _invoke(main, ["stop", TRICKY, "--workdir", str(tricky_dir)])
    assert result.exit_code == 1
    assert f"no running local run named {TRICKY} under {tricky_dir}" in result.stderr


@pytest.mark.parametrize("command", ["infer", "bench"])
def test_infer_and_bench_show_a_bracketed_endpoint_verbatim(command: str) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}/v2/models/{TRICKY}"
    extra = ["--random"] if command == "infer" else ["--requests", "1"]
    result = _invoke(main, [command, "--endpoint", endpoint, *extra])
    assert result.exit_code == 1
    assert f"error: cannot reach {endpoint}: " in result.stderr


def test_infer_shows_a_bracketed_file_name_verbatim(tricky_dir: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}/v2/models/m"
    args = ["infer", "--endpoint", endpoint, "--random", "--file", str(tricky_dir / "x.npy")]
    result = _invoke(main, args)
    assert result.exit_code == 1
    assert "error: pass exactly one of --random or --file" in result.stderr


def test_fetch_artifact_shows_a_bracketed_source_and_destination_verbatim(
    tricky_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    source = f"s3://bucket/{TRICKY}"
    dest = tricky_dir / "artifact"
    result = _invoke(main, ["fetch-artifact", source, str(dest)])
    assert result.exit_code == 1
    assert f"error: {source}/manifest.json: cannot download: " in result.stderr
    assert not dest.exists()


def test_init_shows_a_bracketed_model_path_verbatim(tricky_dir: Path) -> None:
    model = tricky_dir / f"{FILE}.onnx"
    model.write_bytes(b"not a model [red]x[/red]")
    result = _invoke(main, ["init", str(model)])
    assert result.exit_code == 1
    assert result.stderr.startswith("✗ ") and str(model) in result.stderr


def test_the_example_builder_shows_folders_and_problems_verbatim(tricky_dir: Path) -> None:
    models = tricky_dir / "models"
    missing = _invoke(zoo_main, ["--out", str(models), "--model", "mlp", "--sync-only"])
    assert missing.exit_code == 1
    assert f"missing model file(s): {models}/mlp.onnx;" in missing.stderr

    models.mkdir()
    (models / "mlp.onnx").write_bytes(b"not really a model")
    examples = tricky_dir / "examples[/x]"
    args = ["--out", str(models), "--model", "mlp", "--sync-only", "--examples", str(examples)]
    absent = _invoke(zoo_main, args)
    assert absent.exit_code == 0
    assert f"no examples folder {examples}; nothing to sync" in absent.stderr

    examples.mkdir(parents=True)
    (examples / f"{FILE}.yaml").write_text("spec: [unclosed\n")
    broken = _invoke(zoo_main, args)
    assert broken.exit_code == 1
    assert f"✗ {examples}/{FILE}.yaml" in broken.stderr


def test_only_the_terminal_module_builds_consoles_or_spinners() -> None:
    """Any other Console() or .status(str) would bring markup parsing back."""
    offenders = []
    for path in RUNTIME.rglob("*.py"):
        if path.name == "terminal.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "Console" or (name in ("status", "log") and _is_console(func)):
                    offenders.append(f"{path.relative_to(RUNTIME)}:{node.lineno}")
    assert offenders == [], "print through kubeaccel_runtime.terminal instead"


def _is_console(func: ast.expr) -> bool:
    """`x.status(...)` / `x.log(...)` where x is named like a console."""
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name | ast.Attribute)
        and "console" in ast.unparse(func.value)
    )
