"""Split a model into N pipeline shards at cuts where few activations cross, balanced.

A cut after node k of the topologically sorted graph is crossed by every activation produced
at or before k (or a model input) and read after k (or a model output); weights never cross,
each shard carries the initializers it reads. Cuts are ranked by how many tensors cross; among
the cuts with the fewest crossings, N-1 are chosen by dynamic programming to minimise the
largest shard: for `memory` the bytes of the weights each shard holds (what its process
loads), for `compute` each node's measured time when the caller profiled the model
(`node_costs`), else its estimated FLOPs.
QDQ models are cut only where the quantized fusions survive: never right after a
DequantizeLinear or right before a QuantizeLinear.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from kubeaccel_api.v1alpha1 import PartitionBalance
from onnx import ModelProto, NodeProto, ValueInfoProto, helper

from kubeaccel_runtime import onnx_io
from kubeaccel_runtime.artifact_manifest import TensorInfo
from kubeaccel_runtime.optimize import graph as g
from kubeaccel_runtime.optimize.errors import PartitionError

MAX_CANDIDATES = 1500
_MATMULS = ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm", "FusedMatMul")
_CONVS = ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "FusedConv")


@dataclass(frozen=True)
class Shard:
    """One pipeline stage: its model, boundary tensors and balancing cost."""

    index: int
    model: ModelProto
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    cost: float


@dataclass(frozen=True)
class _Graph:
    nodes: list[NodeProto]  # the non-constant nodes, topologically sorted
    const_nodes: list[NodeProto]  # nodes computing only from weights (e.g. weight DQ)
    values: dict[str, ValueInfoProto]
    weights: dict[str, set[str]]  # weight-like tensor -> the initializers it is made of
    crossing: list[list[str]]  # crossing[k]: tensors crossing the cut before node k
    invalid: list[str | None]  # why cut k is not allowed (None: allowed)


def _split_constants(
    ordered: list[NodeProto], inits: set[str]
) -> tuple[list[NodeProto], list[NodeProto], dict[str, set[str]]]:
    """Separate nodes that only transform weights; their outputs count as weights."""
    weights: dict[str, set[str]] = {name: {name} for name in inits}
    nodes: list[NodeProto] = []
    const_nodes: list[NodeProto] = []
    for node in ordered:
        reads = g.node_inputs(node)
        constant = (
            bool(reads)
            and all(name in weights for name in reads)
            and not any(a.g.node or a.graphs for a in node.attribute)
            and not node.op_type.startswith("Random")
        )
        if constant:
            const_nodes.append(node)
            origin = set().union(*(weights[name] for name in reads))
            for out in node.output:
                if out:
                    weights[out] = origin
        else:
            nodes.append(node)
    return nodes, const_nodes, weights


def _analyse(model: ModelProto) -> _Graph:
    inits = onnx_io.initializer_names(model)
    nodes, const_nodes, weights = _split_constants(g.topological_order(model.graph), inits)
    values = g.value_infos(model)
    n = len(nodes)
    inputs = [vi.name for vi in onnx_io.graph_inputs(model)]
    outputs = {o.name for o in model.graph.output}
    born: dict[str, int] = {name: -1 for name in inputs}
    last: dict[str, int] = {}
    producer_op: dict[str, str] = {}
    quantized_reader: set[str] = set()
    for pos, node in enumerate(nodes):
        for name in g.node_inputs(node):
            if name not in weights:
                last[name] = max(last.get(name, -1), pos)
            if node.op_type == "QuantizeLinear" and name == node.input[0]:
                quantized_reader.add(name)
        for name in node.output:
            if name:
                born[name] = pos
                producer_op[name] = node.op_type
    for name in outputs:
        last[name] = n
    order = sorted(born, key=lambda t: (born[t], inputs.index(t) if t in inputs else 0))
    crossing: list[list[str]] = [[] for _ in range(n + 1)]
    for name in order:
        end = last.get(name)
        if end is None:
            continue
        for k in range(born[name] + 1, end + 1):
            crossing[k].append(name)
    invalid = [_why_invalid(c, values, producer_op, quantized_reader) for c in crossing]
    return _Graph(nodes, const_nodes, values, weights, crossing, invalid)


def _why_invalid(
    names: list[str],
    values: dict[str, ValueInfoProto],
    producer_op: dict[str, str],
    quantized_reader: set[str],
) -> str | None:
    if not names:
        return "nothing crosses"
    for name in names:
        value = values.get(name)
        if value is None:
            return f"{name} has no inferred type"
        try:
            onnx_io.tensor_info(value)
        except onnx_io.ModelLoadError as exc:
            return str(exc)
        if producer_op.get(name) == "DequantizeLinear":
            return f"{name} is a DequantizeLinear output (keeps QDQ fusion whole)"
        if name in quantized_reader:
            return f"{name} feeds a QuantizeLinear (keeps QDQ fusion whole)"
    return None


def _dims1(value: ValueInfoProto | None) -> list[int] | None:
    """Dims with unknown ones (batch) taken as 1."""
    dims = g.dims(value)
    return None if dims is None else [d if d is not None else 1 for d in dims]


def node_flops(
    node: NodeProto, values: dict[str, ValueInfoProto], weights: dict[str, list[int]]
) -> float:
    """Estimated multiply-adds x2 of a node at batch 1 (elementwise ops: one per element)."""
    out = _dims1(values.get(node.output[0])) if node.output else None
    if out is None:
        return 0.0
    out_elems = float(np.prod(out)) if out else 1.0

    def shape_of(name: str) -> list[int] | None:
        return weights.get(name) or _dims1(values.get(name))

    if node.op_type in _CONVS:
        w_index = 3 if node.op_type == "QLinearConv" else 1
        w = shape_of(node.input[w_index]) if len(node.input) > w_index else None
        return 2.0 * out_elems * float(np.prod(w[1:])) if w else out_elems
    if node.op_type in _MATMULS:
        a_index = 0
        a = shape_of(node.input[a_index])
        if not a:
            return out_elems
        transposed = node.op_type == "Gemm" and any(
            at.name == "transA" and at.i for at in node.attribute
        )
        k = a[0] if transposed else a[-1]
        return 2.0 * out_elems * float(k)
    return out_elems


def _costs(
    model: ModelProto,
    graph: _Graph,
    balance: PartitionBalance,
    node_costs: Mapping[str, float] | None = None,
) -> np.ndarray:
    inits = g.initializer_map(model)
    costs = np.zeros(len(graph.nodes), dtype=np.float64)
    if balance is PartitionBalance.COMPUTE and node_costs:
        for pos, node in enumerate(graph.nodes):
            costs[pos] = max(0.0, float(node_costs.get(node.name, 0.0)))
    elif balance is PartitionBalance.MEMORY:
        seen: set[str] = set()
        for pos, node in enumerate(graph.nodes):
            for name in g.node_inputs(node):
                for init in sorted(graph.weights.get(name, set()) - seen):
                    seen.add(init)
                    costs[pos] += g.tensor_nbytes(inits[init])
    else:
        shapes = {name: list(t.dims) for name, t in inits.items()}
        for pos, node in enumerate(graph.nodes):
            costs[pos] = node_flops(node, graph.values, shapes)
    # A tiny per-node cost breaks ties towards shards with similar node counts.
    return costs + max(float(costs.sum()), 1.0) * 1e-9


def valid_cuts(model: ModelProto) -> list[int]:
    """Positions k (cut before node k) where the graph can be split."""
    graph = _analyse(_prepared(model))
    return [k for k in range(1, len(graph.nodes)) if graph.invalid[k] is None]


def _prepared(model: ModelProto) -> ModelProto:
    return g.infer_shapes(g.constants_to_initializers(model))


def _candidates(graph: _Graph, needed: int) -> list[int]:
    valid = [k for k in range(1, len(graph.nodes)) if graph.invalid[k] is None]
    if len(valid) < needed:
        raise PartitionError(
            f"cannot split into {needed + 1} shards: the graph has only {len(valid)} valid cut "
            f"point(s), so at most {len(valid) + 1} shard(s) are possible"
        )
    counts = {k: len(graph.crossing[k]) for k in valid}
    least = min(counts.values())
    slack = 0
    while True:
        chosen = [k for k in valid if counts[k] <= least + slack]
        if len(chosen) >= needed:
            break
        slack += 1
    if len(chosen) > MAX_CANDIDATES:
        chosen = sorted(sorted(chosen, key=lambda k: (counts[k], k))[:MAX_CANDIDATES])
    return chosen


def _choose(candidates: list[int], prefix: np.ndarray, crossing: list[int], cuts: int) -> list[int]:
    """DP: pick `cuts` positions minimising the largest shard cost (then total crossings)."""
    pos = np.asarray(candidates)
    at = prefix[pos]
    cross = np.asarray([crossing[k] for k in candidates], dtype=np.float64)
    m = len(candidates)
    inf = np.inf
    best = at.copy()  # one cut: the first shard is everything before it
    total = cross.copy()
    back: list[np.ndarray] = [np.full(m, -1)]
    for _ in range(1, cuts):
        new_best = np.full(m, inf)
        new_total = np.full(m, inf)
        arg = np.full(m, -1)
        for i in range(1, m):
            span = np.maximum(best[:i], at[i] - at[:i])
            tie = total[:i] + cross[i]
            j = int(np.lexsort((tie, span))[0])
            if span[j] < inf:
                new_best[i], new_total[i], arg[i] = span[j], tie[j], j
        best, total = new_best, new_total
        back.append(arg)
    final = np.maximum(best, prefix[-1] - at)
    i = int(np.lexsort((total, final))[0])
    picked = [i]
    for arg in reversed(back[1:]):
        i = int(arg[i])
        picked.append(i)
    return sorted(int(pos[i]) for i in picked)


def _extract(
    model: ModelProto, graph: _Graph, start: int, stop: int, inputs: list[str], outputs: list[str]
) -> ModelProto:
    """A standalone model of nodes[start:stop] with only the initializers it reads."""
    body = graph.nodes[start:stop]
    needed = {name for node in body for name in g.node_inputs(node)}
    # Weight-only nodes (e.g. a weight's DequantizeLinear) go into every shard that reads them.
    consts: list[NodeProto] = []
    for node in reversed(graph.const_nodes):
        if any(out in needed for out in node.output):
            consts.append(node)
            needed.update(g.node_inputs(node))
    nodes = [*reversed(consts), *body]
    used = {name for node in nodes for name in g.node_inputs(node)}
    produced = {name for node in nodes for name in node.output if name}
    initializers = [i for i in model.graph.initializer if i.name in used]
    value_info = [
        graph.values[name] for name in sorted(produced - set(outputs)) if name in graph.values
    ]
    sub = helper.make_graph(
        nodes,
        f"{model.graph.name or 'model'}_shard",
        [graph.values[name] for name in inputs],
        [graph.values[name] for name in outputs],
        initializer=initializers,
        value_info=value_info,
    )
    shard = helper.make_model(
        sub,
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
        producer_name="kubeaccel",
        functions=list(model.functions),
    )
    return shard


def partition(
    model: ModelProto,
    shards: int,
    balance: PartitionBalance,
    node_costs: Mapping[str, float] | None = None,
) -> list[Shard]:
    """Split into `shards` pipeline stages whose chained outputs equal the model's.

    `node_costs` (node name -> measured time) replaces the FLOP estimates of `compute`.

    Raises:
        PartitionError: fewer valid cut points than `shards - 1`, or an invalid stage.
    """
    if shards < 1:
        raise PartitionError(f"shards must be at least 1, got {shards}")
    if shards == 1:
        inputs, outputs = onnx_io.model_inputs(model), onnx_io.model_outputs(model)
        return [Shard(0, model, inputs, outputs, 0.0)]
    prepared = _prepared(model)
    graph = _analyse(prepared)
    candidates = _candidates(graph, shards - 1)
    costs = _costs(prepared, graph, balance, node_costs)
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    crossing = [len(c) for c in graph.crossing]
    cuts = _choose(candidates, prefix, crossing, shards - 1)
    bounds = [0, *cuts, len(graph.nodes)]
    model_inputs = [vi.name for vi in onnx_io.graph_inputs(prepared)]
    model_outputs = [o.name for o in prepared.graph.output]
    result: list[Shard] = []
    for index in range(shards):
        start, stop = bounds[index], bounds[index + 1]
        ins = model_inputs if start == 0 else graph.crossing[start]
        outs = model_outputs if stop == len(graph.nodes) else graph.crossing[stop]
        shard_model = _extract(prepared, graph, start, stop, ins, outs)
        try:
            onnx.checker.check_model(shard_model)
        except onnx.checker.ValidationError as exc:
            raise PartitionError(f"shard {index} is not a valid model: {exc}") from None
        result.append(
            Shard(
                index=index,
                model=shard_model,
                inputs=onnx_io.model_inputs(shard_model),
                outputs=onnx_io.model_outputs(shard_model),
                cost=float(prefix[stop] - prefix[start]),
            )
        )
    return result
