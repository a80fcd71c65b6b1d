"""The optimizer (AdamW) and its learning-rate schedule: linear warmup from 0, then cosine decay to 0."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def make_optimizer(
    trainable: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, kind: str | None = None
) -> torch.optim.Optimizer:
    """AdamW (``kind`` adamw or None) or SGD with momentum 0.9 (sgd) over the ``(name, parameter)`` pairs of
    ``trainable``, with weight decay on matrices only."""
    # No decay on vectors: biases, norms and multiplicative scales ((IA)^3, DoRA magnitudes)
    # would be pulled towards 0, which for a scale initialised at 1 is a wrong prior.
    groups = [
        {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    if kind == "sgd":
        return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=0.9)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return int(math.ceil(total_steps * warmup_ratio))


def warmup_cosine_factor(step: int, total_steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
    if step < warmup:
        # (step + 1) so the first step already learns; step `warmup - 1` reaches the peak
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    warmup = warmup_steps(total_steps, warmup_ratio)
    # A module-level function with bound numbers (not a lambda) keeps the scheduler picklable.
    return LambdaLR(optimizer, _Factor(total_steps, warmup))


class _Factor:
    def __init__(self, total_steps: int, warmup: int) -> None:
        self.total_steps = total_steps
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(step, self.total_steps, self.warmup)
