"""Which contract a shard enforces: the spec's where written, else the one the Job recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec
from kubeaccel_runtime.serve.session import load_shard
from serve_fixtures import CPU1, MLP_INPUTS, build_mlp, spec_for, write_artifact

# What the Job would have read from a model with a fixed batch of 2.
RECORDED = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [2, 4]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [2, 3]}],
}


def _artifact(root: Path, spec: dict[str, Any], contract: dict[str, Any] | None) -> Path:
    artifact = write_artifact(root, build_mlp(), spec, name="mlp")
    if contract is not None:  # manifest.json is not in its own digest list
        manifest = json.loads((artifact / "manifest.json").read_text())
        (artifact / "manifest.json").write_text(json.dumps({**manifest, "contract": contract}))
    return artifact


def _without_inputs(spec: dict[str, Any]) -> AcceleratedModelSpec:
    return AcceleratedModelSpec.model_validate({k: v for k, v in spec.items() if k != "inputs"})


@pytest.mark.parametrize("spec_from", ["the manifest", "the pod"])
def test_without_written_inputs_the_recorded_contract_is_enforced(
    tmp_path: Path, spec_from: str
) -> None:
    wire = _without_inputs(spec_for(MLP_INPUTS)).to_wire()
    artifact = _artifact(tmp_path, wire, RECORDED)
    spec = None if spec_from == "the manifest" else AcceleratedModelSpec.model_validate(wire)
    model = load_shard(artifact, 0, spec=spec, config=CPU1)
    [rule] = model.contract.inputs
    assert rule.shape == (2, 4) and rule.reject_non_finite
    assert model.contract.outputs[0].shape == (2, 3)


def test_written_inputs_win_over_the_recorded_contract(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path, spec_for(MLP_INPUTS), RECORDED)
    [rule] = load_shard(artifact, 0, config=CPU1).contract.inputs
    assert rule.shape == (-1, 4) and (rule.min, rule.max) == (-100, 100)


def test_an_artifact_from_before_contracts_were_recorded_falls_back_to_the_signature(
    tmp_path: Path,
) -> None:
    artifact = _artifact(tmp_path, _without_inputs(spec_for(MLP_INPUTS)).to_wire(), None)
    [rule] = load_shard(artifact, 0, config=CPU1).contract.inputs
    assert (rule.name, rule.shape, rule.min) == ("x", (-1, 4), None)
