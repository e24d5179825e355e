"""The example image classifier: the seed's conv net, sized for 1x32x32 grayscale digits.

Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Conv2D 100 -> MaxPool (3x3 kernels, "same"
padding, ReLU), Flatten, Dense 512, Dropout, Dense 10. At 32x32 the three convolutions are
~90 % of the multiply-adds, so removing channels (structured pruning) is what speeds it up.
"""

from __future__ import annotations

from torch import Tensor, nn

INPUT_SIZE = 32
CHANNELS = (32, 64, 100)
HIDDEN = 512
DROPOUT = 0.3


class DigitsCNN(nn.Module):
    """Conv 32/64/100 + MaxPool, Dense 512, Dropout, Dense `classes`; input (N, 1, S, S)."""

    def __init__(
        self,
        input_size: int = INPUT_SIZE,
        channels: tuple[int, int, int] = CHANNELS,
        hidden: int = HIDDEN,
        classes: int = 10,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        if input_size % 8 or input_size < 8:
            raise ValueError(f"input_size must be a positive multiple of 8, got {input_size}")
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = input_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3 * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, classes),
        )

    def prunable_layers(self) -> list[nn.Module]:
        """Layers whose output channels/rows structured pruning can remove (all but the head)."""
        return [self.features[0], self.features[3], self.features[6], self.classifier[1]]

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of (N, 1, S, S) images in [0, 1]."""
        out: Tensor = self.classifier(self.features(x))
        return out
