"""Task heads, losses and metrics on top of any registered backbone.

A :class:`TaskModel` is ``head(pool(backbone(batch)))`` (or per token for per-residue
tasks). The head is an attribute named ``head`` so PEFT methods train it as the task
head (``modules_to_save``) and a linear probe finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.tasks import metrics

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TaskSpec:
    name: str
    per_token: bool
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    """``evaluate(outputs, labels)`` over a whole split."""
    main_metric: str


def _classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    probabilities = logits.float().softmax(-1)
    predictions = probabilities.argmax(-1)
    results = {"accuracy": metrics.accuracy(labels, predictions), "macro_f1": metrics.macro_f1(labels, predictions)}
    if len(torch.unique(labels)) == probabilities.shape[-1]:
        results["auroc"] = metrics.auroc(labels, probabilities)
    return results


def _per_residue_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"q3_accuracy": metrics.q3_accuracy(labels, logits.argmax(-1), IGNORE_INDEX)}


TASKS: dict[str, TaskSpec] = {
    "classification": TaskSpec(
        "classification", False, lambda out, y: F.cross_entropy(out, y), _classification_metrics, "accuracy"
    ),
    "regression": TaskSpec(
        "regression",
        False,
        lambda out, y: F.mse_loss(out.squeeze(-1), y.float()),
        lambda out, y: {
            "spearman": metrics.spearman(y, out.squeeze(-1)),
            "mse": F.mse_loss(out.squeeze(-1).float(), y.float()).item(),
        },
        "spearman",
    ),
    "per_residue": TaskSpec(
        "per_residue",
        True,
        lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX),
        _per_residue_metrics,
        "q3_accuracy",
    ),
}


HEAD_INITS = ("default", "zeros")
"""``task.options.head_init``: PyTorch's Linear initialisation, or zeros, so that every output starts at 0
whatever the features' mean. Private training (train.privacy) learns a random head's offset slowly under
clipping and noise; De et al. 2022 (arXiv:2204.13650) and Mehta et al. 2022 (arXiv:2205.02973) start
private fine-tuning from a zero head."""


class TaskModel(nn.Module):
    """A backbone with a linear head for classification, regression or per-token labels."""

    def __init__(self, backbone: nn.Module, task: str, num_outputs: int, head_init: str = "default") -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not allowed; choose one of {', '.join(TASKS)}")
        if head_init not in HEAD_INITS:
            raise ConfigError(f"task.options.head_init={head_init!r}: choose one of {', '.join(HEAD_INITS)}")
        self.backbone = backbone
        self.task = TASKS[task]
        # backbone: a module with zoo.catalog.backbones.Backbone's members, which nn.Module types as Tensor | Module
        self.head = nn.Linear(backbone.hidden_size, num_outputs)  # type: ignore[arg-type]
        if head_init == "zeros":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        features = self.backbone(batch)
        if self.task.per_token:
            return self.head(features)
        return self.head(self.backbone.pool(features, batch))  # type: ignore[operator]  # Backbone.pool

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.task.loss(outputs, labels)
