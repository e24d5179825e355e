"""Pipeline partitioning: chained shards reproduce the model, balanced, with clear errors."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from kubeaccel_api.v1alpha1 import PartitionBalance
from kubeaccel_runtime.optimize import stages
from kubeaccel_runtime.optimize.bench import node_times
from kubeaccel_runtime.optimize.config import StaticQuantConfig
from kubeaccel_runtime.optimize.data import Samples
from kubeaccel_runtime.optimize.errors import PartitionError
from kubeaccel_runtime.optimize.partition import partition, valid_cuts
from kubeaccel_runtime.optimize.session import Chain, SessionSettings
from onnx import TensorProto, helper, numpy_helper


def _x(shape: tuple[int, ...], seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _chained(shards, feeds):  # type: ignore[no-untyped-def]
    return Chain.of([s.model for s in shards], SessionSettings()).run(feeds)


@pytest.mark.parametrize("balance", list(PartitionBalance))
@pytest.mark.parametrize("count", [2, 3, 4])
def test_chained_cnn_shards_reproduce_the_unsplit_outputs(opt_models, opt_run, balance, count):
    model = opt_models.cnn()
    shards = partition(model, count, balance)
    assert [s.index for s in shards] == list(range(count))
    feeds = {"input": _x((5, 1, 8, 8))}
    expected = opt_run(model, feeds)[0]
    got = _chained(shards, feeds)[0]
    assert np.abs(got - expected).max() <= 1e-5


def test_shards_chain_by_name_and_record_dtypes_and_dynamic_dims(opt_models):
    shards = partition(opt_models.cnn(), 3, PartitionBalance.MEMORY)
    assert [t.name for t in shards[0].inputs] == ["input"]
    assert shards[0].inputs[0].shape == [-1, 1, 8, 8]
    assert [t.name for t in shards[-1].outputs] == ["logits"]
    for before, after in itertools.pairwise(shards):
        assert [t.name for t in before.outputs] == [t.name for t in after.inputs]
        for tensor in after.inputs:
            assert tensor.dtype.value == "float32"
            assert tensor.shape[0] == -1


def test_each_shard_carries_only_the_weights_it_reads(opt_models):
    model = opt_models.cnn()
    shards = partition(model, 2, PartitionBalance.COMPUTE)
    all_names = [{i.name for i in s.model.graph.initializer} for s in shards]
    assert not (all_names[0] & all_names[1])
    assert set().union(*all_names) == {i.name for i in model.graph.initializer}
    for shard in shards:
        used = {name for node in shard.model.graph.node for name in node.input}
        assert {i.name for i in shard.model.graph.initializer} <= used


def test_memory_balance_gives_the_biggest_weight_a_shard_of_its_own(opt_models):
    shards = partition(opt_models.mlp(hidden=256), 3, PartitionBalance.MEMORY)
    weights = [{i.name for i in s.model.graph.initializer} for s in shards]
    assert "w1" in weights[0] and "w3" in weights[2]
    assert weights[1] <= {"w2", "b2"} and "w2" in weights[1]


def test_compute_balance_splits_flops_not_bytes(opt_models):
    # conv2 has few weights but most of the FLOPs: compute balance gives it a shard.
    shards = partition(opt_models.cnn(), 2, PartitionBalance.COMPUTE)
    first = {n.name for n in shards[0].model.graph.node}
    assert "conv1" in first and "conv2" not in first
    memory = partition(opt_models.cnn(), 2, PartitionBalance.MEMORY)
    assert {n.name for n in memory[0].model.graph.node} != first


def test_cuts_cross_activations_never_weights(opt_models):
    for shard in partition(opt_models.attention(), 2, PartitionBalance.COMPUTE):
        inits = {i.name for i in shard.model.graph.initializer}
        assert not {t.name for t in shard.inputs} & inits


def test_residual_graphs_split_where_one_tensor_crosses(opt_models, opt_run):
    model = opt_models.attention()
    shards = partition(model, 2, PartitionBalance.MEMORY)
    assert len(shards[1].inputs) == 1  # the residual stream, not two tensors
    feeds = {"input": _x((2, 8, 32))}
    np.testing.assert_allclose(_chained(shards, feeds)[0], opt_run(model, feeds)[0], atol=1e-5)


def test_static_int8_qdq_models_split_without_breaking_fusion(opt_models, opt_run):
    model = opt_models.cnn()
    calib = Samples({"input": _x((16, 1, 8, 8), seed=9)}, None, "test")
    qdq = stages.run_stage(
        stages.QUANTIZE_STATIC, model, StaticQuantConfig(calibration=calib)
    ).model
    shards = partition(qdq, 3, PartitionBalance.COMPUTE)
    producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
    for shard in shards[1:]:
        for tensor in shard.inputs:
            assert producers[tensor.name] != "DequantizeLinear"
    feeds = {"input": _x((4, 1, 8, 8))}
    np.testing.assert_allclose(_chained(shards, feeds)[0], opt_run(qdq, feeds)[0], atol=1e-5)


def test_a_model_input_read_late_passes_through_earlier_shards(opt_run):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Tanh", ["b"], ["c"]),
        helper.make_node("Add", ["c", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "skip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    shards = partition(model, 3, PartitionBalance.COMPUTE)
    assert "x" in {t.name for t in shards[1].inputs} and "x" in {t.name for t in shards[1].outputs}
    feeds = {"x": _x((3, 4))}
    np.testing.assert_allclose(_chained(shards, feeds)[0], opt_run(model, feeds)[0], atol=1e-6)


def test_one_shard_is_the_whole_model(opt_models):
    model = opt_models.mlp()
    [shard] = partition(model, 1, PartitionBalance.MEMORY)
    assert shard.model is model
    assert [t.name for t in shard.outputs] == ["logits"]


def test_more_shards_than_cut_points_is_a_clear_error(opt_models):
    model = opt_models.mlp()
    cuts = valid_cuts(model)
    assert len(cuts) == 6
    with pytest.raises(
        PartitionError, match=r"cannot split into 8 shards: .* only 6 valid cut point"
    ):
        partition(model, 8, PartitionBalance.MEMORY)
    assert len(partition(model, 7, PartitionBalance.MEMORY)) == 7


def test_every_shard_is_a_valid_onnx_model(opt_models):
    for shard in partition(opt_models.cnn(), 4, PartitionBalance.COMPUTE):
        onnx.checker.check_model(shard.model, full_check=True)


def test_compute_balance_follows_measured_node_times_when_given(opt_models):
    model = opt_models.cnn()
    estimated = partition(model, 2, PartitionBalance.COMPUTE)
    # Pretend the first convolution dominates the measured time: it gets a shard of its own
    # (as early as a valid cut allows), whatever the FLOP estimates say.
    times = {n.name: 0.01 for n in model.graph.node} | {"conv1": 100.0}
    measured = partition(model, 2, PartitionBalance.COMPUTE, node_costs=times)
    first = [n.name for n in measured[0].model.graph.node]
    assert "conv1" in first and "fc1" not in first
    assert len(measured[0].model.graph.node) < len(estimated[0].model.graph.node)
    assert measured[0].cost > 0.9 * sum(times.values())
    # And a heavy last layer pulls the cut to the end.
    late = partition(
        model, 2, PartitionBalance.COMPUTE, node_costs=times | {"conv1": 0.01, "fc2": 100.0}
    )
    assert [n.name for n in late[1].model.graph.node] == ["fc2"]
    # Memory balance ignores compute times.
    assert [len(s.model.graph.node) for s in partition(model, 2, PartitionBalance.MEMORY)] == [
        len(s.model.graph.node)
        for s in partition(model, 2, PartitionBalance.MEMORY, node_costs=times)
    ]


def test_node_times_name_every_node_that_runs(opt_models):
    model = opt_models.cnn()
    feeds = {"input": _x((8, 1, 8, 8))}
    times = node_times(model, feeds, SessionSettings(), runs=3)
    assert {"conv1", "conv2", "fc1", "fc2"} <= set(times)
    assert set(times) <= {n.name for n in model.graph.node}
    assert all(ms >= 0 for ms in times.values()) and times["conv2"] > 0
