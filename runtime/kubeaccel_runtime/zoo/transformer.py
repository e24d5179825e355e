"""The example transformer: a tiny pre-LN encoder that reads an image as a row sequence.

Each 32x32 digit is a sequence of 32 tokens (its rows, 32 pixels each), linearly embedded to
d_model 192, plus a learned position embedding; 2 encoder layers with 4 heads and a 768-wide
feed-forward; mean-pooled; a linear head. Attention is written out (no fused kernels) so
the ONNX graph is plain MatMul / Softmax / LayerNormalization that quantizers understand.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEQ_LEN = 32
TOKEN_DIM = 32
# d_model 192 rather than 128: per-layer biases, norms and position embedding stay FP32
# under INT8, and at 128 they keep the INT8 file above 0.27x of the FP32 one.
D_MODEL = 192
HEADS = 4
LAYERS = 2
FFN = 768


class EncoderLayer(nn.Module):
    """Pre-LN self-attention + GELU feed-forward, both residual."""

    def __init__(self, seq_len: int, d_model: int, heads: int, ffn: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.seq_len, self.d_model, self.heads = seq_len, d_model, heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn)
        self.fc2 = nn.Linear(ffn, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """(N, seq, d_model) -> (N, seq, d_model)."""
        head_dim = self.d_model // self.heads
        # -1 for the batch keeps the exported Reshape shapes constant except the batch dim.
        qkv = self.qkv(self.norm1(x)).reshape(-1, self.seq_len, 3, self.heads, head_dim)
        q, k, v = torch.unbind(qkv.permute(2, 0, 3, 1, 4), dim=0)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim))
        attended = torch.matmul(torch.softmax(scores, dim=-1), v)
        x = x + self.proj(attended.transpose(1, 2).reshape(-1, self.seq_len, self.d_model))
        out: Tensor = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return out


class TinyTransformer(nn.Module):
    """Encoder classifier over (N, seq_len, token_dim) float sequences."""

    def __init__(
        self,
        seq_len: int = SEQ_LEN,
        token_dim: int = TOKEN_DIM,
        d_model: int = D_MODEL,
        heads: int = HEADS,
        layers: int = LAYERS,
        ffn: int = FFN,
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim, d_model)
        self.position = nn.Parameter(torch.randn(1, seq_len, d_model) * 0.02)
        self.layers = nn.Sequential(
            *(EncoderLayer(seq_len, d_model, heads, ffn) for _ in range(layers))
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of (N, seq_len, token_dim) sequences."""
        hidden = self.layers(self.embed(x) + self.position)
        out: Tensor = self.head(self.norm(hidden.mean(dim=1)))
        return out
