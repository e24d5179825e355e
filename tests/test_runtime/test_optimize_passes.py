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
    Int4WeightConfig,
    MagnitudePruneConfig,
    StaticQuantConfig,
    Step,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.cpu import CpuFeatures, detect, parse_flags, saturation_guard
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.optimize.errors import UnsupportedModel
from kubeaccel_runtime.optimize.graph import op_counts, parameter_count
from kubeaccel_runtime.optimize.quantize import pre_processed
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
        "prune-magnitude", "prune-structured", "quantize-dynamic", "quantize-static",
        "quantize-int4", "fp16", "graph-optimize",
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


# --------------------------------------------------------------------------- embeddings


def _ids(count: int = 128, vocab: int = 1000, seq: int = 8) -> np.ndarray:
    return np.random.default_rng(5).integers(0, vocab, (count, seq)).astype(np.int64)


def _table_type(model) -> int:  # type: ignore[no-untyped-def]
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.name == "embed")
    table = gather.input[0]
    producer = next((n for n in model.graph.node if table in n.output), None)
    if producer is not None:  # a weight DequantizeLinear (static QDQ)
        table = producer.input[0]
    return next(i.data_type for i in model.graph.initializer if i.name == table)


def test_dynamic_int8_quantizes_embedding_tables_when_asked_and_stays_close(opt_models, opt_run):
    model = opt_models.embedder()
    with_tables = stages.run_stage(
        stages.QUANTIZE_DYNAMIC, model, DynamicQuantConfig(op_types=("MatMul", "Gemm", "Gather"))
    )
    without = stages.run_stage(stages.QUANTIZE_DYNAMIC, model, DynamicQuantConfig())
    assert _table_type(without.model) == TensorProto.FLOAT
    assert _table_type(with_tables.model) in (TensorProto.UINT8, TensorProto.INT8)
    assert without.model.ByteSize() > 0.9 * model.ByteSize()  # the table is 90 % of it
    assert with_tables.model.ByteSize() < 0.3 * model.ByteSize()
    feeds = {"input_ids": _ids()}
    ref = opt_run(model, feeds)[0]
    got, matmuls_only = opt_run(with_tables.model, feeds)[0], opt_run(without.model, feeds)[0]
    # The table's INT8 adds little to what the (tiny, random) MatMuls already lose.
    assert np.abs(got - matmuls_only).mean() < 0.02 * np.abs(ref).mean()
    tables_only = stages.run_stage(
        stages.QUANTIZE_DYNAMIC, model, DynamicQuantConfig(op_types=("Gather",))
    )
    alone = opt_run(tables_only.model, feeds)[0]
    assert np.abs(alone - ref).mean() < 0.02 * np.abs(ref).mean()
    assert np.mean(ref.argmax(1) == alone.argmax(1)) >= 0.97


def test_static_int8_quantizes_embedding_tables_through_qdq(opt_models, opt_run):
    model = opt_models.embedder()
    calib = Samples({"input_ids": _ids(32)}, None, "test")
    out = stages.run_stage(stages.QUANTIZE_STATIC, model, StaticQuantConfig(calibration=calib))
    assert _table_type(out.model) in (TensorProto.UINT8, TensorProto.INT8)
    assert out.model.ByteSize() < 0.35 * model.ByteSize()
    tables = stages.run_stage(
        stages.QUANTIZE_STATIC, model, StaticQuantConfig(calibration=calib, op_types=("Gather",))
    )
    assert _table_type(tables.model) in (TensorProto.UINT8, TensorProto.INT8)
    feeds = {"input_ids": _ids()}
    ref, got = opt_run(model, feeds)[0], opt_run(tables.model, feeds)[0]
    assert np.abs(got - ref).mean() < 0.02 * np.abs(ref).mean()
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.97


# --------------------------------------------------------------------------- 4-bit


def _int4_reference(w: np.ndarray, block: int) -> np.ndarray:
    """Symmetric blockwise 4-bit of w[K, N] along K, as MatMulNBits stores it, dequantized."""
    k = w.shape[0]
    out = np.empty_like(w)
    for start in range(0, k, block):
        part = w[start : start + block]
        hi, lo = part.max(axis=0), part.min(axis=0)
        signed = np.where(np.abs(hi) > np.abs(lo), hi, lo)  # the extreme value keeps its sign
        scale = signed / -8.0
        q = np.clip(np.round(np.where(scale == 0, 0, part / np.where(scale == 0, 1, scale))), -8, 7)
        out[start : start + block] = q * scale
    return out


def test_4bit_weight_only_matches_the_blockwise_dequantized_weights(opt_models, opt_run):
    model = opt_models.mlp(features=96, hidden=64)
    exact = stages.run_stage(stages.QUANTIZE_INT4, model, Int4WeightConfig(accuracy_level=0))
    ops = op_counts(exact.model)
    assert ops["MatMulNBits"] == 2 and "MatMul" not in ops  # fc1, fc2; the Gemm head stays
    assert exact.notes["quantizedMatMuls"] == 2 and exact.notes["blockSize"] == 32
    x = _x((16, 96))
    w1, w2 = _weights(model, "w1"), _weights(model, "w2")
    b1, b2 = _weights(model, "b1"), _weights(model, "b2")
    w3, b3 = _weights(model, "w3"), _weights(model, "b3")
    h = np.maximum(x @ _int4_reference(w1, 32) + b1, 0)
    h = np.maximum(h @ _int4_reference(w2, 32) + b2, 0)
    expected = h @ w3.T + b3
    got = opt_run(exact.model, {"input": x})[0]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    # And against the original: 4-bit error, well below the signal.
    ref = opt_run(model, {"input": x})[0]
    assert np.abs(got - ref).mean() < 0.1 * np.abs(ref).mean()


def test_4bit_with_int8_activations_stays_close_and_packs_weights_two_to_a_byte(
    opt_models, opt_run
):
    model = opt_models.attention(d=64)
    fast = stages.run_stage(stages.QUANTIZE_INT4, model, Int4WeightConfig())
    exact = stages.run_stage(stages.QUANTIZE_INT4, model, Int4WeightConfig(accuracy_level=0))
    assert fast.notes["accuracyLevel"] == 4
    assert op_counts(fast.model)["MatMulNBits"] == 5  # q, k, v, ff1, ff2; attention stays
    packed = sum(
        i.ByteSize() for i in fast.model.graph.initializer if i.data_type == TensorProto.UINT8
    )
    float_weights = 64 * 64 * 3 + 64 * 128 * 2
    assert packed == pytest.approx(float_weights / 2, rel=0.05)  # 4 bits per weight
    x = {"input": _x((4, 8, 64))}
    ref = opt_run(model, x)[0]
    got, exact_out = opt_run(fast.model, x)[0], opt_run(exact.model, x)[0]
    # int8 activations (accuracy level 4) add little on top of the 4-bit weights...
    assert np.abs(got - exact_out).mean() < 0.03 * np.abs(ref).mean()
    # ...which stay within 4-bit noise of the original through two attention layers.
    assert np.abs(got - ref).mean() < 0.2 * np.abs(ref).mean()


def test_4bit_leaves_excluded_matmuls_in_float_and_rejects_a_model_without_matmul_weights(
    opt_models,
):
    out = stages.run_stage(
        stages.QUANTIZE_INT4, opt_models.mlp(), Int4WeightConfig(nodes_to_exclude=("fc2",))
    )
    ops = op_counts(out.model)
    assert ops["MatMulNBits"] == 1 and ops["MatMul"] == 1
    assert out.notes["keptFp32"] == ["fc2"]
    only = stages.run_stage(
        stages.QUANTIZE_INT4, opt_models.mlp(), Int4WeightConfig(nodes_to_quantize=("fc2",))
    )
    assert op_counts(only.model)["MatMulNBits"] == 1
    assert next(n for n in only.model.graph.node if n.op_type == "MatMul").name == "fc1"
    with pytest.raises(UnsupportedModel, match="no MatMul with constant 2-D float weights"):
        stages.run_stage(stages.QUANTIZE_INT4, opt_models.cnn(), Int4WeightConfig())


def test_int8_passes_quantize_only_the_named_nodes_or_leave_the_excluded_ones(opt_models):
    model = opt_models.attention()  # 3-D MatMuls: pre-processing keeps their names
    excluded = stages.run_stage(
        stages.QUANTIZE_DYNAMIC, model, DynamicQuantConfig(nodes_to_exclude=("q", "ff2"))
    )
    float_matmuls = {n.name for n in excluded.model.graph.node if n.op_type == "MatMul"}
    assert {"q", "ff2"} <= float_matmuls and not {"k", "v", "ff1"} & float_matmuls
    assert excluded.notes["keptFp32"] == ["q", "ff2"]
    only = stages.run_stage(
        stages.QUANTIZE_DYNAMIC, model, DynamicQuantConfig(nodes_to_quantize=("k",))
    )
    assert op_counts(only.model)["MatMulInteger"] == 1
    nothing = stages.run_stage(
        stages.QUANTIZE_DYNAMIC, model, DynamicQuantConfig(nodes_to_quantize=())
    )
    assert "MatMulInteger" not in op_counts(nothing.model)


def test_the_names_int8_quantizers_exclude_by_are_those_after_pre_processing(opt_models):
    # onnxruntime fuses a 2-D MatMul+Add into a Gemm, which dynamic INT8 splits again.
    static_names = {n.name for n in pre_processed(opt_models.mlp()).graph.node}
    assert "fc1/MatMulAddFusion" in static_names and "fc1" not in static_names
    dynamic = pre_processed(opt_models.mlp(), dynamic=True)
    matmuls = [n.name for n in dynamic.graph.node if n.op_type == "MatMul"]
    assert matmuls == ["fc1/MatMulAddFusion_MatMul", "fc2/MatMulAddFusion_MatMul", "head_MatMul"]
    out = stages.run_stage(
        stages.QUANTIZE_DYNAMIC,
        opt_models.mlp(),
        DynamicQuantConfig(nodes_to_exclude=(matmuls[0],)),
    )
    assert op_counts(out.model)["MatMulInteger"] == 2  # fc2 and the head
