"""Every optimization pass on real small models, with numeric checks."""

from __future__ import annotations

import numpy as np
import pytest
from kubeaccel_api.v1alpha1 import CalibrationMethod, GraphOptimizationLevel
from kubeaccel_runtime.optimize import stages
from kubeaccel_runtime.optimize.config import (
    DynamicQuantConfig,
    Fp16Config,
    GraphOptConfig,
    MagnitudePruneConfig,
    StaticQuantConfig,
    Step,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.cpu import CpuFeatures, detect, parse_flags, saturation_guard
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.optimize.graph import op_counts, parameter_count
from onnx import TensorProto, numpy_helper

# What the pipeline decides on this machine: x86 without VNNI (e.g. AVX2 only) saturates
# u8 x s8 products in 16 bits unless weights use 7 bits; closeness is checked as deployed.
REDUCE_RANGE = saturation_guard(detect()).reduce_range


def _x(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _weights(model, name):  # type: ignore[no-untyped-def]
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


# --------------------------------------------------------------------------- pruning


def test_magnitude_pruning_zeroes_the_requested_fraction_of_each_weight(opt_models, opt_run):
    model = opt_models.mlp()
    out = stages.run_stage(stages.PRUNE_MAGNITUDE, model, MagnitudePruneConfig(sparsity=0.5))
    for name in ("w1", "w2", "w3"):
        w = _weights(out.model, name)
        assert np.mean(w == 0) == pytest.approx(0.5, abs=0.01)
        # The survivors are the largest-magnitude weights of the original.
        original = _weights(model, name)
        kept = np.abs(original[w != 0])
        assert kept.min() >= np.abs(original[w == 0]).max()
    assert _weights(out.model, "b1").tolist() == _weights(model, "b1").tolist()
    assert out.notes["achievedSparsity"] == pytest.approx(0.5, abs=0.01)
    x = {"input": _x((16, 64))}
    ref, got = opt_run(model, x)[0], opt_run(out.model, x)[0]
    assert got.shape == ref.shape and np.isfinite(got).all()


def test_magnitude_pruning_leaves_the_input_model_untouched(opt_models):
    model = opt_models.mlp()
    before = model.SerializeToString()
    stages.run_stage(stages.PRUNE_MAGNITUDE, model, MagnitudePruneConfig(sparsity=0.9))
    assert model.SerializeToString() == before


def test_structured_pruning_shrinks_an_mlp_and_stays_close_when_pruned_rows_carry_little(
    opt_models, opt_run
):
    model = opt_models.mlp(weak=24)
    out = stages.run_stage(stages.PRUNE_STRUCTURED, model, StructuredPruneConfig(sparsity=0.5))
    assert _weights(out.model, "w1").shape == (64, 24)
    assert _weights(out.model, "b1").shape == (24,)
    assert _weights(out.model, "w2").shape == (24, 24)
    assert _weights(out.model, "w3").shape == (10, 24)  # the head's fan-in follows
    assert parameter_count(out.model) < 0.6 * parameter_count(model)
    assert [p["layer"] for p in out.notes["pruned"]] == ["fc1", "fc2"]
    assert out.notes["skipped"] == [
        {"layer": "head", "op": "Gemm", "reason": "logits is a graph output"}
    ]
    x = {"input": _x((32, 64))}
    ref, got = opt_run(model, x)[0], opt_run(out.model, x)[0]
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.95


def test_structured_pruning_fixes_batchnorm_and_flatten_fan_in_of_a_cnn(opt_models, opt_run):
    model = opt_models.cnn(weak=8)
    out = stages.run_stage(stages.PRUNE_STRUCTURED, model, StructuredPruneConfig(sparsity=0.5))
    assert _weights(out.model, "c1w").shape == (4, 1, 3, 3)
    assert _weights(out.model, "bn_s").shape == (4,)
    assert _weights(out.model, "bn_v").shape == (4,)
    assert _weights(out.model, "c2w").shape == (8, 4, 3, 3)
    # Flatten of [N, 8, 2, 2] -> the first Gemm keeps 8 * 4 input features.
    assert _weights(out.model, "f1w").shape == (16, 32)
    assert _weights(out.model, "f2w").shape == (10, 16)
    x = {"input": _x((32, 1, 8, 8))}
    ref, got = opt_run(model, x)[0], opt_run(out.model, x)[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.9


def test_structured_pruning_removes_the_lowest_l1_channels(opt_models):
    model = opt_models.cnn(weak=8)
    out = stages.run_stage(stages.PRUNE_STRUCTURED, model, StructuredPruneConfig(sparsity=0.5))
    original = _weights(model, "c2w")
    norms = np.abs(original.reshape(16, -1)).sum(1)
    kept = np.sort(np.argsort(norms)[8:])
    np.testing.assert_array_equal(_weights(out.model, "c2b"), _weights(model, "c2b")[kept])


def test_structured_pruning_skips_layers_that_feed_a_residual_add(opt_models, opt_run):
    model = opt_models.residual()
    out = stages.run_stage(stages.PRUNE_STRUCTURED, model, StructuredPruneConfig(sparsity=0.5))
    reasons = {s["layer"]: s["reason"] for s in out.notes["skipped"]}
    assert "residual" in reasons["conv1"] or "another branch" in reasons["conv1"]
    assert "another branch" in reasons["conv2"]
    assert [p["layer"] for p in out.notes["pruned"]] == ["conv3"]
    assert _weights(out.model, "c3w").shape == (2, 8, 1, 1)
    assert _weights(out.model, "fw").shape == (3, 2)
    x = {"input": _x((4, 2, 6, 6))}
    assert opt_run(out.model, x)[0].shape == (4, 3)


def test_structured_pruning_leaves_attention_projections_alone(opt_models, opt_run):
    model = opt_models.attention()
    out = stages.run_stage(stages.PRUNE_STRUCTURED, model, StructuredPruneConfig(sparsity=0.5))
    pruned = [p["layer"] for p in out.notes["pruned"]]
    assert pruned == ["ff1"]  # the FFN hidden layer is the only safe one
    assert _weights(out.model, "w1").shape == (32, 32)
    assert _weights(out.model, "w2").shape == (32, 32)
    x = {"input": _x((2, 8, 32))}
    assert opt_run(out.model, x)[0].shape == (2, 8, 32)


def test_structured_pruning_at_zero_sparsity_changes_nothing(opt_models):
    model = opt_models.cnn()
    out = stages.run_stage(stages.PRUNE_STRUCTURED, model, StructuredPruneConfig(sparsity=0.0))
    assert out.notes["pruned"] == []
    assert parameter_count(out.model) == parameter_count(model)


# --------------------------------------------------------------------------- INT8


def test_dynamic_int8_quantizes_matmuls_and_stays_close(opt_models, opt_run):
    model = opt_models.mlp()
    config = DynamicQuantConfig(reduce_range=REDUCE_RANGE)
    out = stages.run_stage(stages.QUANTIZE_DYNAMIC, model, config)
    ops = op_counts(out.model)
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) >= 2
    assert any(i.data_type == TensorProto.INT8 for i in out.model.graph.initializer)
    assert out.model.ByteSize() < 0.45 * model.ByteSize()  # small model: scales add up
    x = {"input": _x((32, 64))}
    ref, got = opt_run(model, x)[0], opt_run(out.model, x)[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.9


def test_dynamic_int8_leaves_convolutions_in_float_by_default(opt_models):
    out = stages.run_stage(stages.QUANTIZE_DYNAMIC, opt_models.cnn(), DynamicQuantConfig())
    ops = op_counts(out.model)
    assert "ConvInteger" not in ops  # 5-7x slower than float Conv on the CPU provider
    assert ops["Conv"] == 2
    assert out.notes["opTypes"] == ["MatMul", "Gemm"]


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_static_int8_inserts_per_channel_qdq_and_stays_close(opt_models, opt_run, method):
    model = opt_models.cnn()
    calib = Samples({"input": _x((32, 1, 8, 8), seed=7)}, None, "test")
    config = StaticQuantConfig(
        calibration=calib, method=method, per_channel=True, reduce_range=REDUCE_RANGE
    )
    out = stages.run_stage(stages.QUANTIZE_STATIC, model, config)
    ops = op_counts(out.model)
    assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] >= 5
    # Per-channel: the conv weight's scale has one entry per output channel.
    dq_scales = [
        _weights(out.model, n.input[1])
        for n in out.model.graph.node
        if n.op_type == "DequantizeLinear"
    ]
    assert any(s.shape == (16,) for s in dq_scales)
    assert out.notes["calibration"]["method"] == method.value
    x = {"input": _x((32, 1, 8, 8))}
    ref, got = opt_run(model, x)[0], opt_run(out.model, x)[0]
    assert np.abs(got - ref).max() < 0.15 * np.abs(ref).max()
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.8


def test_symmetric_static_int8_has_int8_activations_and_zero_points_for_tensorrt(
    opt_models, opt_run
):
    model = opt_models.cnn()
    calib = Samples({"input": _x((32, 1, 8, 8), seed=7)}, None, "test")
    out = stages.run_stage(
        stages.QUANTIZE_STATIC, model, StaticQuantConfig(calibration=calib, symmetric=True)
    )
    zero_points = [
        _weights(out.model, n.input[2])
        for n in out.model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    ]
    # Zero points all 0; activations and weights s8 (biases stay int32, as quantized).
    assert zero_points and not any(z.any() for z in zero_points)
    assert {z.dtype for z in zero_points} <= {np.dtype(np.int8), np.dtype(np.int32)}
    assert np.dtype(np.int8) in {z.dtype for z in zero_points}
    assert out.notes["activations"] == "int8 symmetric"
    x = {"input": _x((32, 1, 8, 8))}
    ref, got = opt_run(model, x)[0], opt_run(out.model, x)[0]
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.8


def test_static_int8_records_the_reduce_range_decision(opt_models):
    calib = Samples({"input": _x((8, 64))}, None, "test")
    out = stages.run_stage(
        stages.QUANTIZE_STATIC,
        opt_models.mlp(),
        StaticQuantConfig(calibration=calib, reduce_range=True),
    )
    assert out.notes["reduceRange"] is True


@pytest.mark.parametrize(
    ("arch", "flags", "reduce"),
    [
        ("x86_64", "fpu sse avx2 avx512f avx512_vnni", False),
        ("x86_64", "fpu sse avx2 avx_vnni", False),
        ("x86_64", "fpu sse avx2 avx512f", True),
        ("aarch64", "", False),
    ],
)
def test_saturation_guard_uses_seven_bit_weights_only_on_x86_without_vnni(arch, flags, reduce):
    vnni = bool(parse_flags(f"flags\t: {flags}\n") & {"avx512_vnni", "avx_vnni"})
    decision = saturation_guard(
        CpuFeatures(arch=arch, vnni=vnni, flags_known=bool(flags) or arch != "x86_64")
    )
    assert decision.reduce_range is reduce
    assert decision.reason


def test_saturation_guard_is_cautious_when_cpu_flags_are_unknown():
    assert saturation_guard(CpuFeatures("x86_64", vnni=False, flags_known=False)).reduce_range


# --------------------------------------------------------------------------- FP16, graph


def test_fp16_halves_weights_keeps_float32_io_and_stays_close(opt_models, opt_run):
    model = opt_models.cnn()
    out = stages.run_stage(stages.FP16, model, Fp16Config(keep_io_types=True))
    floats = [
        i
        for i in out.model.graph.initializer
        if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
    ]
    assert floats and all(i.data_type == TensorProto.FLOAT16 for i in floats)
    assert out.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert out.model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert out.model.ByteSize() < 0.6 * model.ByteSize()
    x = {"input": _x((16, 1, 8, 8))}
    ref, got = opt_run(model, x)[0], opt_run(out.model, x)[0]
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())


def test_fp16_keeps_overflow_prone_ops_in_float32(opt_models, opt_run):
    model = opt_models.attention()
    out = stages.run_stage(stages.FP16, model, Fp16Config())
    assert set(out.notes["blockedOpsPresent"]) == {"LayerNormalization", "Softmax"}
    softmax = next(n for n in out.model.graph.node if n.op_type == "Softmax")
    producers = {o: n for n in out.model.graph.node for o in n.output}
    assert producers[softmax.input[0]].op_type == "Cast"  # fed back in float32
    x = {"input": _x((2, 8, 32))}
    ref, got = opt_run(model, x)[0], opt_run(out.model, x)[0]
    assert np.abs(got - ref).max() < 2e-2 * max(1.0, np.abs(ref).max())


def test_graph_optimization_keeps_outputs_and_records_load_times(opt_models, opt_run):
    model = opt_models.cnn()
    out = stages.run_stage(
        stages.GRAPH_OPTIMIZE, model, GraphOptConfig(level=GraphOptimizationLevel.ALL)
    )
    notes = out.notes
    assert notes["offlineLevel"] == "extended"  # ALL adds CPU-specific layouts: not saved
    assert {"loadMsOriginal", "loadMsOptimized", "offline"} <= set(notes)
    if notes["offline"]:
        assert notes["nodesOptimized"] < notes["nodesOriginal"]  # BN folded, Conv+Relu fused
    x = {"input": _x((4, 1, 8, 8))}
    np.testing.assert_allclose(opt_run(out.model, x)[0], opt_run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_graph_optimization_disabled_returns_the_model_unchanged(opt_models):
    model = opt_models.cnn()
    out = stages.run_stage(
        stages.GRAPH_OPTIMIZE, model, GraphOptConfig(level=GraphOptimizationLevel.DISABLED)
    )
    assert out.model is model and out.notes["offline"] is False


# --------------------------------------------------------------------------- registry


def test_stages_are_registered_by_name_with_their_config_type(opt_models):
    assert set(stages.STAGES) == {
        "prune-magnitude", "prune-structured", "quantize-dynamic", "quantize-static", "fp16", "graph-optimize"
    }  # fmt: skip
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        stages.run_stage("nope", opt_models.mlp(), Fp16Config())
    with pytest.raises(TypeError, match="takes Fp16Config"):
        stages.run_stage(stages.FP16, opt_models.mlp(), DynamicQuantConfig())


def test_steps_chain_stages_and_record_each(opt_models, opt_run):
    steps = (
        Step(stages.PRUNE_STRUCTURED, StructuredPruneConfig(sparsity=0.25)),
        Step(stages.QUANTIZE_DYNAMIC, DynamicQuantConfig()),
    )
    model, records = stages.run_steps(opt_models.mlp(weak=12), steps)
    assert [r["stage"] for r in records] == ["prune-structured", "quantize-dynamic"]
    assert _weights(model, "w1_quantized").shape == (64, 36)
    assert opt_run(model, {"input": _x((3, 64))})[0].shape == (3, 10)
