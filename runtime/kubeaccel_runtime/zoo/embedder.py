"""The example embedding model: token ids -> a sentence embedding and topic logits.

Like a small BERT-style encoder: a VOCAB x D_MODEL token embedding (a Gather in ONNX, ~90 %
of the weights), a learned position embedding, one pre-LN self-attention + feed-forward
layer, mean pooling, a LayerNorm'd sentence embedding (output 2) and a linear topic head
(output 1). Attention is written out, as in the example transformer, so the graph is plain
Gather / MatMul / Softmax / LayerNormalization.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kubeaccel_runtime.zoo.topics import CLASSES, SEQ_LEN, VOCAB
from kubeaccel_runtime.zoo.transformer import EncoderLayer

D_MODEL = 64
HEADS = 4
LAYERS = 1
FFN = 256
DROPOUT = 0.1


class TopicEmbedder(nn.Module):
    """Encoder over (N, seq_len) int64 token ids; forward gives the logits (for training)."""

    def __init__(
        self,
        vocab: int = VOCAB,
        seq_len: int = SEQ_LEN,
        d_model: int = D_MODEL,
        heads: int = HEADS,
        layers: int = LAYERS,
        ffn: int = FFN,
        classes: int = CLASSES,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.randn(1, seq_len, d_model) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            *(EncoderLayer(seq_len, d_model, heads, ffn) for _ in range(layers))
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def encode(self, ids: Tensor) -> Tensor:
        """The (N, d_model) sentence embedding: mean of the encoded tokens, normalized."""
        hidden = self.layers(self.drop(self.tokens(ids)) + self.position)
        out: Tensor = self.norm(hidden.mean(dim=1))
        return out

    def forward(self, ids: Tensor) -> Tensor:
        """Topic logits (N, classes)."""
        out: Tensor = self.head(self.encode(ids))
        return out


class WithEmbedding(nn.Module):
    """What is exported: both outputs, logits first (the accuracy gate reads output 0)."""

    def __init__(self, model: TopicEmbedder) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, embedding)."""
        embedding = self.model.encode(ids)
        return self.model.head(embedding), embedding


def for_export(model: nn.Module) -> nn.Module:
    """The module to export: the trained model with its sentence embedding as a second output."""
    if not isinstance(model, TopicEmbedder):
        raise TypeError(f"expected a TopicEmbedder, got {type(model).__name__}")
    return WithEmbedding(model)
