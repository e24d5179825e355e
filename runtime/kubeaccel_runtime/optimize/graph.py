"""Small pure helpers over an ONNX graph: producers, consumers, shapes, topological order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, numpy_helper

from kubeaccel_runtime.onnx_io import copy_model


def consumers(graph: GraphProto) -> dict[str, list[tuple[NodeProto, int]]]:
    """Tensor name -> (node, input index) of every node reading it (subgraphs included)."""
    out: dict[str, list[tuple[NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                out[name].append((node, index))
        for name in sorted(subgraph_references(node)):
            out[name].append((node, -1))
    return out


def producers(graph: GraphProto) -> dict[str, NodeProto]:
    """Tensor name -> the node that writes it."""
    return {name: node for node in graph.node for name in node.output if name}


def subgraph_references(node: NodeProto) -> set[str]:
    """Outer-scope names that the node's subgraphs (If/Loop/Scan bodies) read."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for sub in graphs:
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer}
            local |= {o for n in sub.node for o in n.output}
            for inner in sub.node:
                names |= {i for i in inner.input if i and i not in local}
                names |= subgraph_references(inner) - local
    return names


def node_inputs(node: NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs and its subgraphs' outer-scope references."""
    return [i for i in node.input if i] + sorted(subgraph_references(node))


def constants_to_initializers(model: ModelProto) -> ModelProto:
    """Turn top-level Constant nodes into initializers (weights are then in one place)."""
    out = copy_model(model)
    keep: list[NodeProto] = []
    added: list[TensorProto] = []
    for node in out.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            tensor = _constant_tensor(node)
            if tensor is not None:
                tensor.name = node.output[0]
                added.append(tensor)
                continue
        keep.append(node)
    if added:
        del out.graph.node[:]
        out.graph.node.extend(keep)
        out.graph.initializer.extend(added)
    return out


def _constant_tensor(node: NodeProto) -> TensorProto | None:
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None:
        return None
    value = onnx.helper.get_attribute_value(attr)
    if attr.name == "value" and isinstance(value, TensorProto):
        tensor = TensorProto()
        tensor.CopyFrom(value)
        return tensor
    dtypes = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    if attr.name in dtypes:
        return numpy_helper.from_array(np.asarray(value, dtype=dtypes[attr.name]))
    return None


def infer_shapes(model: ModelProto) -> ModelProto:
    """ONNX shape inference with stale value_info dropped first; the input is not modified."""
    out = copy_model(model)
    del out.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(out, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return out


def value_infos(model: ModelProto) -> dict[str, ValueInfoProto]:
    """Every typed value of the main graph: inputs, outputs and inferred intermediates."""
    out: dict[str, ValueInfoProto] = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi
    return out


def dims(value: ValueInfoProto | None) -> list[int | None] | None:
    """Dimensions of a value (None for unknown/symbolic ones), or None when the rank is unknown."""
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in value.type.tensor_type.shape.dim
    ]


def topological_order(graph: GraphProto) -> list[NodeProto]:
    """Nodes in a stable topological order (graph order where it is already valid)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[NodeProto] = []
    while pending:
        progressed = False
        rest: list[NodeProto] = []
        for node in pending:
            if all(name in available for name in node_inputs(node)):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            missing = sorted({n for node in rest for n in node_inputs(node)} - available)
            raise ValueError(f"graph has a cycle or undefined tensors: {missing[:5]}")
        pending = rest
    return ordered


def initializer_map(model: ModelProto) -> dict[str, TensorProto]:
    """Initializer name -> tensor."""
    return {init.name: init for init in model.graph.initializer}


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes of an initializer's data (external data included)."""
    size = int(np.prod(tensor.dims)) if tensor.dims else 1
    item = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return size * item


def op_counts(model: ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph has."""
    counts: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        counts[node.op_type] += 1
    return dict(counts)


def parameter_count(model: ModelProto, names: Iterable[str] | None = None) -> int:
    """Number of elements in the (named) initializers."""
    wanted = set(names) if names is not None else None
    return sum(
        int(np.prod(i.dims)) if i.dims else 1
        for i in model.graph.initializer
        if wanted is None or i.name in wanted
    )


def ensure_node_names(model: ModelProto) -> ModelProto:
    """A copy where every node has a unique name (quantizers exclude nodes by name)."""
    out = copy_model(model)
    taken = {n.name for n in out.graph.node if n.name}
    seen: set[str] = set()
    counter = 0
    for node in out.graph.node:
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        while f"{node.op_type}_{counter}" in taken:
            counter += 1
        node.name = f"{node.op_type}_{counter}"
        taken.add(node.name)
        seen.add(node.name)
    return out
