"""The AcceleratedModel models: defaults, wire form, and the invalid-resource catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubeaccel_api.artifact import artifact_id
from kubeaccel_api.v1alpha1 import (
    AcceleratedModelSpec,
    ExecutionProvider,
    OptimizationStatus,
    QuantizationMode,
)
from kubeaccel_api.validation import InvalidResource, parse_resource

INVALID_DIR = Path(__file__).parent / "invalid"
INVALID = sorted(INVALID_DIR.glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


MINIMAL = {
    "source": {"uri": "file://m.onnx", "sha256": "0" * 64},
    "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}],
}


def test_the_invalid_catalogue_has_at_least_fifteen_cases() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_each_invalid_resource_fails_with_its_field_path_message(path: Path) -> None:
    with pytest.raises(InvalidResource) as exc:
        parse_resource(yaml.safe_load(path.read_text()))
    expected = _expected(path)
    assert any(line.startswith(expected) for line in exc.value.problems), exc.value.problems


def test_a_minimal_spec_gets_safe_defaults() -> None:
    spec = AcceleratedModelSpec.model_validate(MINIMAL)
    assert spec.optimization.quantization.mode is QuantizationMode.NONE
    assert spec.optimization.partition.shards == 1
    assert spec.runtime.execution_provider is ExecutionProvider.AUTO
    assert spec.runtime.resources.gpu_resource_name == "nvidia.com/gpu"
    assert spec.limits.max_request_bytes == 16 * 1024 * 1024


def test_wire_form_is_camel_case_and_omits_absent_fields() -> None:
    wire = AcceleratedModelSpec.model_validate(MINIMAL).to_wire()
    assert wire["runtime"]["resources"]["gpuResourceName"] == "nvidia.com/gpu"
    assert "pruning" not in wire["optimization"]
    assert wire["limits"]["maxRequestBytes"] == 16 * 1024 * 1024
    assert AcceleratedModelSpec.model_validate(wire) == AcceleratedModelSpec.model_validate(MINIMAL)


def test_snake_case_names_are_accepted_in_python() -> None:
    spec = AcceleratedModelSpec.model_validate(
        {**MINIMAL, "runtime": {"execution_provider": "cpu"}}
    )
    assert spec.runtime.execution_provider is ExecutionProvider.CPU


def test_every_problem_is_reported_not_only_the_first() -> None:
    bad = {
        "apiVersion": "kubeaccel.io/v1alpha1",
        "kind": "AcceleratedModel",
        "metadata": {"name": "m"},
        "spec": {
            **MINIMAL,
            "optimization": {"pruning": {"sparsity": 2}, "partition": {"shards": 0}},
        },
    }
    with pytest.raises(InvalidResource) as exc:
        parse_resource(bad)
    assert len(exc.value.problems) == 2


def test_a_non_mapping_document_is_a_clear_error() -> None:
    with pytest.raises(InvalidResource, match="expected a mapping"):
        parse_resource(["not", "a", "resource"])  # type: ignore[arg-type]


def test_artifact_id_changes_with_source_and_optimization_only() -> None:
    spec = AcceleratedModelSpec.model_validate(MINIMAL)
    same = spec.model_copy(update={"runtime": spec.runtime.model_copy(update={"replicas": 5})})
    new_source = AcceleratedModelSpec.model_validate(
        {**MINIMAL, "source": {"uri": "file://m.onnx", "sha256": "1" * 64}}
    )
    new_opt = AcceleratedModelSpec.model_validate(
        {**MINIMAL, "optimization": {"quantization": {"mode": "dynamic-int8"}}}
    )
    ids = {artifact_id(spec), artifact_id(new_source), artifact_id(new_opt)}
    assert len(ids) == 3
    assert artifact_id(same) == artifact_id(spec)
    assert len(artifact_id(spec)) == 16


def test_a_spec_without_a_contract_is_valid_and_leaves_it_to_the_model() -> None:
    spec = AcceleratedModelSpec.model_validate({"source": MINIMAL["source"]})
    assert spec.inputs is None and spec.outputs is None
    assert "inputs" not in spec.to_wire()


@pytest.mark.parametrize("fmt", ["onnx", "torch-exported-program"])
def test_formats_that_record_their_signature_need_no_contract(fmt: str) -> None:
    spec = AcceleratedModelSpec.model_validate({"source": {**MINIMAL["source"], "format": fmt}})
    assert spec.inputs is None


def test_a_written_contract_may_not_be_empty() -> None:
    with pytest.raises(ValueError, match="at least 1 item"):
        AcceleratedModelSpec.model_validate({**MINIMAL, "inputs": []})


def test_the_contract_read_from_the_model_fits_in_status() -> None:
    status = OptimizationStatus.model_validate(
        {
            "artifactId": "a" * 16,
            "contract": {
                "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 4]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
            },
        }
    )
    assert status.contract is not None and status.contract.inputs[0].shape == [-1, 4]
    assert status.to_wire()["contract"]["outputs"][0]["name"] == "logits"


def test_rollout_defaults_to_replace_and_shadow_compares_with_the_optimizer_budget() -> None:
    spec = AcceleratedModelSpec.model_validate(MINIMAL)
    assert spec.rollout.strategy.value == "replace"
    shadow = AcceleratedModelSpec.model_validate(
        {
            **MINIMAL,
            "optimization": {"accuracyBudget": {"minTop1Agreement": 0.9}},
            "rollout": {"strategy": "shadow"},
        }
    )
    assert shadow.comparison_budget.min_top1_agreement == 0.9
    assert shadow.rollout.shadow_settings.mirror_percent == 10.0
    own = AcceleratedModelSpec.model_validate(
        {
            **MINIMAL,
            "optimization": {"accuracyBudget": {"minTop1Agreement": 0.9}},
            "rollout": {"strategy": "shadow", "budget": {"maxAbsDiff": 0.1}},
        }
    )
    assert own.comparison_budget.max_abs_diff == 0.1
    assert own.comparison_budget.min_top1_agreement is None  # replaces, does not merge
    canary = AcceleratedModelSpec.model_validate({**MINIMAL, "rollout": {"strategy": "canary"}})
    assert canary.rollout.canary_settings.steps == [10, 50]


def test_autoscaling_is_absent_unless_asked_for() -> None:
    spec = AcceleratedModelSpec.model_validate(MINIMAL)
    assert spec.runtime.autoscaling is None
    scaled = AcceleratedModelSpec.model_validate(
        {**MINIMAL, "runtime": {"resources": {"cpu": "1"}, "autoscaling": {"maxReplicas": 3}}}
    )
    assert scaled.runtime.autoscaling is not None
    assert (
        scaled.runtime.autoscaling.min_replicas,
        scaled.runtime.autoscaling.target.cpu_utilization,
    ) == (1, 70)
