"""The example MLP: 784-512-512-10 on 28x28 digits, flattened."""

from __future__ import annotations

from torch import Tensor, nn

INPUT_SIZE = 28
FEATURES = INPUT_SIZE * INPUT_SIZE
HIDDEN = 512
DROPOUT = 0.2


class DigitsMLP(nn.Module):
    """Dense `hidden` -> ReLU -> Dense `hidden` -> ReLU -> Dense `classes`; input (N, 784)."""

    def __init__(
        self,
        features: int = FEATURES,
        hidden: int = HIDDEN,
        classes: int = 10,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of (N, 784) flattened images in [0, 1]."""
        out: Tensor = self.layers(x)
        return out
