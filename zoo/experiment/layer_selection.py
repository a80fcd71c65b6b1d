"""Which blocks to train: ``method.layers=auto:K`` measures each block's importance first.

Pu et al. (2023, "Empirical Analysis of the Strengths and Weaknesses of PEFT Techniques for
LLMs") found that training a well-chosen subset of layers keeps or improves quality with far
fewer parameters; IST (Yao et al. 2024, "Layer-wise Importance Matters: Less Memory for Better
Performance in PEFT of LLMs") picks the layers by a measured importance. Here a block's
importance is the norm of the gradient of the training loss with respect to the method's own
parameters inside that block,

    importance(b) = sqrt( sum over batches, over trainable p in block b of ||dL/dp||^2 ),

measured with the method applied to every block, on a few training batches, before training.
The K most important blocks are kept (ties go to the earlier block) and written into the
method's ``layers`` option, so the saved adapter reloads onto the same blocks.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zoo.errors import ConfigError


def block_importance(
    model: nn.Module,
    task: Any,
    dataset: Dataset,
    block_names: Sequence[str],
    batches: int = 4,
    batch_size: int = 8,
    seed: int = 0,
) -> list[float]:
    """The importance of each block in ``block_names`` (same order); the model's gradients are left cleared."""
    from zoo.train.loop import move_to_device

    owned = {
        block: [p for name, p in model.named_parameters() if p.requires_grad and name.startswith(block + ".")]
        for block in block_names
    }
    empty = [block for block, parameters in owned.items() if not parameters]
    if len(empty) == len(block_names):
        raise ConfigError("layers=auto: the method trains no parameter inside any block, so blocks cannot be ranked")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=task.collate, generator=generator)
    squared = torch.zeros(len(block_names), dtype=torch.float64)
    was_training = model.training
    model.train()
    try:
        for index, (batch, labels) in enumerate(loader):
            if index >= batches:
                break
            model.zero_grad(set_to_none=True)
            task.loss(model, move_to_device(batch, device), move_to_device(labels, device)).backward()
            for position, block in enumerate(block_names):
                squared[position] += sum(
                    float(p.grad.double().pow(2).sum()) for p in owned[block] if p.grad is not None
                )
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return [math.sqrt(value) for value in squared.tolist()]


def most_important(scores: Sequence[float], count: int) -> list[int]:
    """Indices of the ``count`` highest scores, in block order; ties keep the earlier block."""
    ranked = sorted(range(len(scores)), key=lambda index: (-scores[index], index))
    return sorted(ranked[:count])
