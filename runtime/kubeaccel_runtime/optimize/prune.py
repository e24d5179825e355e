"""Pruning passes: magnitude (zero single weights) and structured (remove whole channels/rows).

Structured pruning removes the lowest-L1 output channels of a Conv (or rows of a Gemm/MatMul)
and follows the pruned tensor forward through channel-preserving ops (activations, pooling,
BatchNormalization, elementwise ops with per-channel constants, Flatten/Reshape) to the next
Conv/Gemm/MatMul, whose input channels are removed too. A layer whose output reaches anything
else (a residual Add with another branch, Concat, a graph output, attention reshapes...) is
skipped and the reason recorded: the model stays valid and computes fewer FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, numpy_helper

from kubeaccel_runtime.onnx_io import copy_model
from kubeaccel_runtime.optimize import graph as g
from kubeaccel_runtime.optimize.config import (
    MagnitudePruneConfig,
    StageOutput,
    StructuredPruneConfig,
)
from kubeaccel_runtime.optimize.errors import UnsupportedModel

_FLOATS = (np.float32, np.float16, np.float64)


def _weight_input(node: NodeProto, inits: dict[str, TensorProto]) -> str | None:
    """The constant weight a Conv/Gemm/MatMul multiplies by, if it has one."""
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
        return str(node.input[1])
    if node.op_type == "MatMul":
        for name in (node.input[1], node.input[0]):
            if name in inits:
                return str(name)
    return None


def prune_magnitude(model: ModelProto, config: MagnitudePruneConfig) -> StageOutput:
    """Zero the `sparsity` fraction of smallest-|w| entries of every Conv/Gemm/MatMul weight."""
    out = copy_model(model)
    inits = g.initializer_map(out)
    layers: list[dict[str, object]] = []
    done: set[str] = set()
    for node in out.graph.node:
        if node.op_type not in config.op_types:
            continue
        name = _weight_input(node, inits)
        if name is None or name in done:
            continue
        done.add(name)
        weights = numpy_helper.to_array(inits[name])
        if weights.dtype.type not in _FLOATS or weights.ndim < 2:
            continue
        k = round(weights.size * config.sparsity)
        if k == 0:
            continue
        flat = weights.copy().reshape(-1)
        flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
        inits[name].CopyFrom(numpy_helper.from_array(flat.reshape(weights.shape), name))
        layers.append(
            {"layer": node.name or name, "weight": name, "zeros": int(k), "size": int(weights.size)}
        )
    zeros = sum(int(str(layer["zeros"])) for layer in layers)
    total = sum(int(str(layer["size"])) for layer in layers)
    notes = {
        "sparsity": config.sparsity,
        "layers": layers,
        "zeroedWeights": zeros,
        "achievedSparsity": round(zeros / total, 4) if total else 0.0,
        "note": "unstructured zeros shrink nothing and run no faster on dense kernels",
    }
    return StageOutput(out, notes)


# --------------------------------------------------------------------------- structured

_UNARY = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Softsign",
        "HardSigmoid", "HardSwish", "Gelu", "Erf", "Identity", "Dropout", "Abs", "Neg",
        "Mish", "Celu", "ThresholdedRelu", "Cast", "Floor", "Ceil", "Round", "Sign",
    }
)  # fmt: skip
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "PRelu", "Pow"})
_SPATIAL_POOLS = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
)
_PER_CHANNEL_NORMS = frozenset({"BatchNormalization", "InstanceNormalization"})


class _Skip(Exception):
    """This layer cannot be pruned; the message says why."""


@dataclass(frozen=True)
class _Track:
    """A tensor whose `axis` carries the pruned channels: `keep` of `full` indices survive."""

    axis: int
    rank: int
    keep: np.ndarray
    full: int

    def same_layout(self, other: _Track) -> bool:
        return (self.axis, self.rank, self.full) == (other.axis, other.rank, other.full)


@dataclass
class _Surgery:
    """Slices to apply (initializer, axis, kept indices) and constants to rewrite."""

    slices: list[tuple[str, int, np.ndarray]] = field(default_factory=list)
    rewrites: list[tuple[str, np.ndarray]] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)


class _Analysis:
    """Read-only view of a model for one pruning decision."""

    def __init__(self, model: ModelProto) -> None:
        self.model = g.infer_shapes(model)
        self.inits = g.initializer_map(self.model)
        self.consumers = g.consumers(self.model.graph)
        self.values = g.value_infos(self.model)
        self.outputs = {o.name for o in self.model.graph.output}

    def dims(self, name: str) -> list[int | None] | None:
        return g.dims(self.values.get(name))

    def const(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def users(self, name: str) -> int:
        return len(self.consumers.get(name, []))


def _attr(node: NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(onnx.helper.get_attribute_value(attr))
    return default


def _producer_plan(
    node: NodeProto, view: _Analysis, sparsity: float, min_keep: int
) -> tuple[_Track, _Surgery]:
    """Which output channels of `node` to keep, and the slices of its own weight and bias."""
    surgery = _Surgery()
    if node.op_type == "Conv":
        if _attr(node, "group", 1) != 1:
            raise _Skip("grouped/depthwise convolution")
        weight = view.const(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            raise _Skip("weight is not a constant")
        scores = np.abs(weight.reshape(weight.shape[0], -1)).sum(axis=1)
        rank, axis, w_axis = weight.ndim, 1, 0
    elif node.op_type in ("Gemm", "MatMul"):
        weight = view.const(node.input[1])
        if weight is None or weight.ndim != 2:
            raise _Skip("right-hand side is not a constant matrix")
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            raise _Skip("transposed input")
        w_axis = 0 if node.op_type == "Gemm" and _attr(node, "transB", 0) else 1
        scores = np.abs(weight).sum(axis=1 - w_axis)
        out_dims = view.dims(node.output[0])
        if node.op_type == "Gemm":
            rank, axis = 2, 1
        elif out_dims is None:
            raise _Skip("output rank unknown")
        else:
            rank, axis = len(out_dims), len(out_dims) - 1
    else:
        raise _Skip(f"{node.op_type} is not prunable")
    if weight.dtype.type not in _FLOATS:
        raise _Skip(f"weight dtype {weight.dtype}")
    full = int(weight.shape[w_axis])
    if view.users(node.input[1]) != 1:
        raise _Skip("weight shared with another node")
    drop = min(int(np.floor(full * sparsity)), full - max(1, min_keep))
    if drop <= 0:
        raise _Skip("too few channels to remove any")
    # Stable sort keeps the lower index on ties, so results are deterministic.
    keep = np.sort(np.argsort(scores, kind="stable")[drop:])
    surgery.slices.append((node.input[1], w_axis, keep))
    bias_index = 2
    if len(node.input) > bias_index and node.input[bias_index]:
        bias = view.const(node.input[bias_index])
        if bias is None or view.users(node.input[bias_index]) != 1:
            raise _Skip("bias is not a private constant")
        if bias.size == full and bias.ndim >= 1 and bias.shape[-1] == full:
            surgery.slices.append((node.input[bias_index], bias.ndim - 1, keep))
        elif bias.size != 1:
            raise _Skip(f"bias shape {list(bias.shape)} is not per-channel")
    return _Track(axis, rank, keep, full), surgery


def _broadcast_const(value: np.ndarray, track: _Track, name: str, surgery: _Surgery) -> None:
    """A constant operand of an elementwise op: per-channel ones are sliced, scalars kept."""
    if value.ndim > track.rank:
        raise _Skip(f"constant {name} broadcasts to a higher rank")
    position = track.axis - (track.rank - value.ndim)
    if position < 0 or value.shape[position] == 1:
        return
    if value.shape[position] != track.full:
        raise _Skip(f"constant {name} does not match the channel dimension")
    surgery.slices.append((name, position, track.keep))


def _flatten_track(track: _Track, in_dims: list[int | None] | None, axis: int) -> _Track:
    """The channel indices after flattening dims [axis:] into one (batch first)."""
    if in_dims is None or track.axis < axis or axis != 1:
        raise _Skip("flatten of an unknown or unsupported layout")
    outer = in_dims[axis : track.axis]
    inner = in_dims[track.axis + 1 :]
    if any(d is None for d in (*outer, *inner)):
        raise _Skip("flatten of a tensor with unknown spatial size")
    n_outer = int(np.prod([d for d in outer if d is not None], dtype=np.int64))
    n_inner = int(np.prod([d for d in inner if d is not None], dtype=np.int64))
    per_outer = track.full * n_inner
    idx = (track.keep[:, None] * n_inner + np.arange(n_inner)[None, :]).reshape(-1)
    expanded = (np.arange(n_outer)[:, None] * per_outer + idx[None, :]).reshape(-1)
    return _Track(1, 2, expanded, n_outer * per_outer)


def _follow(start: str, first: _Track, view: _Analysis, surgery: _Surgery) -> None:
    """Walk the pruned tensor's consumers up to the next weighted layers; raise _Skip if stuck.

    Nodes are visited in graph (topological) order, so when an elementwise op joins two
    tensors both derived from the pruned one (e.g. x * sigmoid(x)), both are already known.
    """
    tracks = {start: first}
    for node in view.model.graph.node:
        on_path = [i for i, name in enumerate(node.input) if name in tracks]
        if not on_path and not (g.subgraph_references(node) & tracks.keys()):
            continue
        index = on_path[0] if on_path else -1
        name = node.input[index] if on_path else ""
        for out_name, out_track in _consume(
            node, index, name, tracks.get(name, first), view, surgery, tracks
        ):
            tracks[out_name] = out_track
    reached = sorted(view.outputs & tracks.keys())
    if reached:
        raise _Skip(f"{reached[0]} is a graph output")


def _consume(
    node: NodeProto,
    index: int,
    name: str,
    track: _Track,
    view: _Analysis,
    surgery: _Surgery,
    tracks: dict[str, _Track],
) -> list[tuple[str, _Track]]:
    op = node.op_type
    if index < 0 or node.domain not in ("", "ai.onnx"):
        raise _Skip(f"{op} {node.name!r} reads it from a subgraph or custom domain")
    used_outputs = [o for o in node.output if o]
    if op in _UNARY:
        if op == "Dropout" and any(view.users(o) for o in used_outputs[1:]):
            raise _Skip("Dropout mask is used")
        return [(used_outputs[0], track)]
    if op == "Clip":
        if index != 0:
            raise _Skip("Clip bound depends on the pruned tensor")
        return [(node.output[0], track)]
    if op in _BINARY:
        for other in node.input:
            if other == name:
                continue
            if other in tracks:
                if not tracks[other].same_layout(track):
                    raise _Skip(f"{op} {node.name!r} joins different layouts")
                continue
            value = view.const(other)
            if value is None:
                raise _Skip(f"{op} {node.name!r} joins another branch (e.g. a residual)")
            if view.users(other) != 1 and value.size != 1:
                raise _Skip(f"constant {other} is shared")
            _broadcast_const(value, track, other, surgery)
        return [(node.output[0], track)]
    if op in _PER_CHANNEL_NORMS:
        if index != 0 or track.axis != 1:
            raise _Skip(f"{op} over a non-channel axis")
        if any(view.users(o) for o in used_outputs[1:]):
            raise _Skip(f"{op} training outputs are used")
        for param in node.input[1:]:
            value = view.const(param)
            if value is None or value.shape != (track.full,) or view.users(param) != 1:
                raise _Skip(f"{op} parameter {param} is not a private per-channel constant")
            surgery.slices.append((param, 0, track.keep))
        return [(node.output[0], track)]
    if op in _SPATIAL_POOLS:
        if track.axis != 1 or len(used_outputs) != 1:
            raise _Skip(f"{op} over a non-channel layout")
        return [(node.output[0], track)]
    if op == "Flatten":
        flat = _flatten_track(track, view.dims(name), _attr(node, "axis", 1))
        return [(node.output[0], flat)]
    if op == "Reshape":
        return [(node.output[0], _reshape(node, index, name, track, view, surgery))]
    _terminal(node, index, track, view, surgery)
    return []


def _reshape(
    node: NodeProto, index: int, name: str, track: _Track, view: _Analysis, surgery: _Surgery
) -> _Track:
    """Only the flatten-style Reshape `[batch, -1]` / `[-1, C*H*W]` is followed."""
    shape = view.const(node.input[1]) if index == 0 else None
    in_dims = view.dims(name)
    if shape is None or shape.ndim != 1 or shape.size != 2 or in_dims is None:
        raise _Skip("Reshape to a layout other than [batch, features]")
    flat = _flatten_track(track, in_dims, 1)
    first, second = int(shape[0]), int(shape[1])
    batch_ok = first in (-1, 0) or (in_dims[0] is not None and first == in_dims[0])
    if second == -1 and first != -1 and batch_ok:
        return flat
    if second == flat.full and batch_ok:
        if view.users(node.input[1]) != 1:
            raise _Skip("Reshape shape constant is shared")
        surgery.rewrites.append(
            (node.input[1], np.array([first, flat.keep.size], dtype=shape.dtype))
        )
        return flat
    raise _Skip(f"Reshape to {shape.tolist()} is not a flatten")


def _terminal(
    node: NodeProto, index: int, track: _Track, view: _Analysis, surgery: _Surgery
) -> None:
    """The next weighted layer: drop the input channels that no longer exist."""
    op = node.op_type
    weight_name = node.input[1] if len(node.input) > 1 else ""
    weight = view.const(weight_name)
    if index != 0 or weight is None:
        raise _Skip(f"{op} {node.name!r} consumes it in an unsupported way")
    if view.users(weight_name) != 1:
        raise _Skip(f"weight {weight_name} of {node.name!r} is shared")
    if op == "Conv":
        if _attr(node, "group", 1) != 1 or track.axis != 1 or weight.shape[1] != track.full:
            raise _Skip(f"Conv {node.name!r} is grouped or its channels do not line up")
        surgery.slices.append((weight_name, 1, track.keep))
    elif op == "Gemm":
        if _attr(node, "transA", 0) or track.rank != 2 or track.axis != 1:
            raise _Skip(f"Gemm {node.name!r} input layout")
        axis = 1 if _attr(node, "transB", 0) else 0
        if weight.shape[axis] != track.full:
            raise _Skip(f"Gemm {node.name!r} fan-in does not line up")
        surgery.slices.append((weight_name, axis, track.keep))
    elif op == "MatMul":
        if weight.ndim != 2 or track.axis != track.rank - 1 or weight.shape[0] != track.full:
            raise _Skip(f"MatMul {node.name!r} fan-in does not line up")
        surgery.slices.append((weight_name, 0, track.keep))
    else:
        raise _Skip(f"{op} {node.name!r} consumes the pruned tensor")
    surgery.consumers.append(node.name or node.output[0])


def _apply(model: ModelProto, surgery: _Surgery) -> None:
    inits = g.initializer_map(model)
    for name, axis, keep in surgery.slices:
        array = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array(np.take(array, keep, axis=axis), name))
    for name, value in surgery.rewrites:
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    # Initializers listed as graph inputs (old exporters) must carry the new shapes.
    changed = {name for name, _, _ in surgery.slices} | {name for name, _ in surgery.rewrites}
    for value_info in model.graph.input:
        if value_info.name in changed:
            init = inits[value_info.name]
            shape = value_info.type.tensor_type.shape
            del shape.dim[:]
            for d in init.dims:
                shape.dim.add().dim_value = d


def prune_structured(model: ModelProto, config: StructuredPruneConfig) -> StageOutput:
    """Remove the lowest-L1 `sparsity` fraction of channels where the graph allows it."""
    out = g.constants_to_initializers(model)
    params_before = g.parameter_count(out)
    pruned: list[dict[str, object]] = []
    skipped: list[dict[str, str]] = []
    candidates = [
        n.name or n.output[0] for n in out.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
    ]
    for layer in candidates:
        view = _Analysis(out)
        node = next(n for n in view.model.graph.node if (n.name or n.output[0]) == layer)
        try:
            track, surgery = _producer_plan(node, view, config.sparsity, config.min_channels)
            _follow(node.output[0], track, view, surgery)
        except _Skip as why:
            skipped.append({"layer": layer, "op": node.op_type, "reason": str(why)})
            continue
        _apply(out, surgery)
        pruned.append(
            {
                "layer": layer,
                "op": node.op_type,
                "channelsBefore": track.full,
                "channelsAfter": int(track.keep.size),
                "fixedUp": surgery.consumers,
            }
        )
    out = g.infer_shapes(out)
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedModel(f"structured pruning produced an invalid model: {exc}") from None
    params_after = g.parameter_count(out)
    notes = {
        "sparsity": config.sparsity,
        "pruned": pruned,
        "skipped": skipped,
        "paramsBefore": params_before,
        "paramsAfter": params_after,
        "paramRatio": round(params_after / params_before, 4) if params_before else 1.0,
    }
    return StageOutput(out, notes)
