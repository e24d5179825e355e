"""A small, seeded, deterministic training loop shared by the example models."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
import torch.utils.deterministic
from torch import nn

# Fixed so a rebuild reproduces the same weights bit for bit on any core count (float
# reductions depend on how work is split across threads). One thread, not two: on a busy
# 2-core host two OpenMP threads wait on each other at every small kernel and a 10 s
# training run took 60-80 s; one thread costs 0-30 % when the host is idle.
TRAIN_THREADS = 1
# A module property torch's stubs do not declare.
_FILL = "fill_uninitialized_memory"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int
    learning_rate: float = 2e-3
    batch_size: int = 32
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class TrainResult:
    """What a training run measured."""

    seconds: float
    final_loss: float


@contextmanager
def deterministic_torch(seed: int, threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Seed torch, pin the thread count and require deterministic kernels; restore after."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    old_fill = getattr(torch.utils.deterministic, _FILL)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # Filling every fresh tensor with NaN only guards against kernels that read memory they
    # never wrote; it costs ~10 % here, and the build-twice test would catch such a read.
    setattr(torch.utils.deterministic, _FILL, False)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)
        setattr(torch.utils.deterministic, _FILL, old_fill)


def train_classifier(
    model: nn.Module,
    inputs: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    config: TrainConfig,
    seed: int,
    regularizer: Callable[[], torch.Tensor] | None = None,
) -> TrainResult:
    """Train `model` in place with AdamW and a one-cycle schedule.

    The loss is cross-entropy, plus `regularizer()` when given (e.g. a group-lasso term).
    """
    if len(inputs) != len(labels) or len(inputs) == 0:
        raise ValueError(
            f"need matching, non-empty inputs and labels ({len(inputs)}, {len(labels)})"
        )
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    x = torch.from_numpy(np.ascontiguousarray(inputs))
    y = torch.from_numpy(np.ascontiguousarray(labels))
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    loss = torch.zeros(())
    model.train()
    for _ in range(config.epochs):
        perm = torch.randperm(len(x), generator=order)
        for first in range(0, len(x), config.batch_size):
            batch = perm[first : first + config.batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            if regularizer is not None:
                loss = loss + regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
    model.eval()
    return TrainResult(seconds=time.perf_counter() - start, final_loss=float(loss.item()))


def group_lasso(layers: Sequence[nn.Module]) -> torch.Tensor:
    """Sum over layers and output channels/rows of the L2 norm of (weights, bias).

    Pushes whole channels towards zero while training ("structured sparsity learning",
    Wen et al. 2016), so removing the weakest half later costs little accuracy.
    """
    total = torch.zeros(())
    for layer in layers:
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        rows = weight.reshape(weight.shape[0], -1).pow(2).sum(dim=1)
        bias = layer.bias
        if isinstance(bias, torch.Tensor):
            rows = rows + bias.pow(2)
        # The epsilon keeps the gradient finite at an all-zero channel.
        total = total + torch.sqrt(rows + 1e-12).sum()
    return total


def predict(
    model: nn.Module, inputs: npt.NDArray[np.generic], batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """Logits of `model` (in eval mode) for every input."""
    model.eval()
    outs = []
    with torch.no_grad():
        for first in range(0, len(inputs), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(inputs[first : first + batch_size]))
            outs.append(model(chunk).numpy())
    return np.concatenate(outs).astype(np.float32)


def accuracy(logits: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
    """Top-1 accuracy of logits against labels."""
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError("logits and labels must be non-empty and the same length")
    return float(np.mean(np.argmax(logits, axis=1) == labels))
