"""Fixtures for the inference server tests (helpers live in serve_fixtures.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Test modules import the helpers by name; pytest's importlib mode adds no test dir to sys.path.
sys.path.insert(0, str(Path(__file__).parent))
# Support shared by several test folders (tests/support).
sys.path.insert(0, str(Path(__file__).parents[2] / "support"))

from kubeaccel_runtime.serve.app import ServeApp, ServeSettings, create_app
from kubeaccel_runtime.serve.session import LoadedModel, load_shard
from serve_fixtures import (
    CPU1,
    MLP_INPUTS,
    Proc,
    build_mlp,
    build_sqrt,
    build_two_inputs,
    spec_for,
    write_artifact,
)

# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-shard MLP artifact with a ranged input contract."""
    root = tmp_path_factory.mktemp("mlp")
    return write_artifact(root, build_mlp(), spec_for(MLP_INPUTS), name="mlp")


@pytest.fixture(scope="session")
def mlp_model(mlp_artifact: Path) -> LoadedModel:
    """The MLP shard, loaded once."""
    return load_shard(mlp_artifact, 0, config=CPU1)


@pytest.fixture(scope="session")
def two_input_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """Three inputs (FP32, INT64, BOOL), two outputs (FP32, BOOL); small limits."""
    root = tmp_path_factory.mktemp("two")
    spec = spec_for(
        [
            {"name": "x", "dtype": "float32", "shape": [-1, 4]},
            {"name": "k", "dtype": "int64", "shape": [-1, 1], "range": {"min": 0, "max": 10}},
            {"name": "mask", "dtype": "bool", "shape": [-1, 4]},
        ],
        limits={"maxBatch": 8, "maxRequestBytes": 4096},
    )
    return load_shard(write_artifact(root, build_two_inputs(), spec, name="two"), 0, config=CPU1)


@pytest.fixture(scope="session")
def sqrt_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """sqrt with NaN outputs rejected (rejectNonFinite on the output)."""
    root = tmp_path_factory.mktemp("sqrt")
    spec = spec_for(
        [{"name": "x", "dtype": "float32", "shape": [-1, 2]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": [-1, 2], "rejectNonFinite": True}],
    )
    return load_shard(write_artifact(root, build_sqrt(), spec, name="sqrt"), 0, config=CPU1)


@pytest.fixture
def app_factory() -> Iterator[Callable[..., ServeApp]]:
    """create_app with cleanup of every app made."""
    made: list[ServeApp] = []

    def make(model: Any, settings: ServeSettings | None = None) -> ServeApp:
        app = create_app(model, settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app._executor.shutdown(wait=False)


@pytest.fixture
def proc_factory() -> Iterator[type[Proc]]:
    made: list[Proc] = []

    class Tracked(Proc):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, **kw)  # type: ignore[arg-type]
            made.append(self)

    yield Tracked
    for p in made:
        p.stop()
