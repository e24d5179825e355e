"""TensorRT provider options shared by the Job and the server (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from kubeaccel_api.v1alpha1 import AcceleratedModelSpec, DType
from kubeaccel_runtime.artifact_manifest import TensorInfo
from kubeaccel_runtime.trt import (
    CPU,
    CUDA,
    TENSORRT,
    profile_shapes,
    provider_specs,
    serving_batches,
    trt_options,
    with_engine_cache,
)


def t(name: str, *shape: int) -> TensorInfo:
    return TensorInfo(name=name, dtype=DType.FLOAT32, shape=list(shape))


def test_a_dynamic_batch_gets_a_profile_from_one_to_the_largest_batch() -> None:
    assert profile_shapes([t("input", -1, 1, 32, 32)], max_batch=64, opt_batch=32) == {
        "trt_profile_min_shapes": "input:1x1x32x32",
        "trt_profile_opt_shapes": "input:32x1x32x32",
        "trt_profile_max_shapes": "input:64x1x32x32",
    }


def test_every_input_of_a_shard_is_in_the_profile_and_opt_is_clamped() -> None:
    profile = profile_shapes([t("a", -1, 8), t("b", -1, 4, 2)], max_batch=16, opt_batch=99)
    assert profile is not None
    assert profile["trt_profile_opt_shapes"] == "a:16x8,b:16x4x2"
    assert profile["trt_profile_min_shapes"] == "a:1x8,b:1x4x2"


@pytest.mark.parametrize(
    "inputs",
    [
        [t("tokens", -1, -1)],  # a dynamic sequence length: TensorRT picks profiles itself
        [t("input", 4, 8)],  # static shapes need no profile
        [t("scalar")],  # rank 0
        [],
    ],
)
def test_no_explicit_profile_when_the_batch_is_not_the_only_dynamic_dimension(
    inputs: list[TensorInfo],
) -> None:
    assert profile_shapes(inputs, max_batch=8) is None


def test_precision_flags_and_profile_make_the_options() -> None:
    profile = {"trt_profile_max_shapes": "x:8x4"}
    assert trt_options(int8=True, profile=profile) == {
        "trt_fp16_enable": "False",
        "trt_int8_enable": "True",
        "trt_profile_max_shapes": "x:8x4",
    }
    cached = with_engine_cache(trt_options(fp16=True), "/a/trt-cache")
    assert cached["trt_engine_cache_enable"] == "True"
    assert cached["trt_engine_cache_path"] == "/a/trt-cache"
    assert cached["trt_fp16_enable"] == "True"


def test_only_tensorrt_gets_options_in_the_providers_argument() -> None:
    options = {"trt_fp16_enable": "True"}
    assert provider_specs([TENSORRT, CUDA, CPU], options) == [
        (TENSORRT, options),
        CUDA,
        CPU,
    ]
    assert provider_specs([CUDA, CPU], options) == [CUDA, CPU]
    assert provider_specs([TENSORRT, CPU], None) == [TENSORRT, CPU]


def _spec(**runtime: Any) -> AcceleratedModelSpec:
    return AcceleratedModelSpec.model_validate(
        {
            "source": {"uri": "file://m.onnx", "allowUnverified": True},
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
            "limits": {"maxBatch": 16},
            "runtime": runtime,
        }
    )


def test_the_profile_covers_single_requests_and_merged_batches() -> None:
    assert serving_batches(_spec()) == (1, 16)
    assert serving_batches(_spec(batching={"enabled": True, "maxBatchSize": 8})) == (8, 16)
    assert serving_batches(_spec(batching={"enabled": True, "maxBatchSize": 64})) == (64, 64)
