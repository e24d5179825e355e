"""Where a model's weight bytes sit: the facts that decide which quantization passes pay off."""

from __future__ import annotations

from dataclasses import dataclass

from onnx import ModelProto, TensorProto

from kubeaccel_runtime.optimize.graph import initializer_map, tensor_nbytes
from kubeaccel_runtime.optimize.int4 import int4_nodes


@dataclass(frozen=True)
class WeightFacts:
    """Float weight bytes in total, in embedding tables, and the 4-bit-eligible MatMuls."""

    float_bytes: int
    embedding_bytes: int
    embedding_nodes: tuple[str, ...]
    int4_nodes: tuple[str, ...]

    @property
    def embedding_share(self) -> float:
        """Fraction of the float weight bytes held by embedding tables."""
        return self.embedding_bytes / self.float_bytes if self.float_bytes else 0.0


def weight_facts(model: ModelProto) -> WeightFacts:
    """Embedding tables are float initializers that a Gather reads as its data (input 0)."""
    inits = initializer_map(model)
    floats = {n: t for n, t in inits.items() if t.data_type == TensorProto.FLOAT}
    tables: set[str] = set()
    nodes: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input and node.input[0] in floats:
            tables.add(node.input[0])
            nodes.append(node.name)
    return WeightFacts(
        float_bytes=sum(tensor_nbytes(t) for t in floats.values()),
        embedding_bytes=sum(tensor_nbytes(floats[n]) for n in tables),
        embedding_nodes=tuple(nodes),
        int4_nodes=tuple(int4_nodes(model)),
    )
