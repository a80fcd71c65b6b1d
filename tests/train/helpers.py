"""A tiny task and model for the trainer tests: a frozen MLP 'backbone' with trainable parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


class PointsDataset(Dataset):
    """``size`` random points in R^8 with 3 classes given by a fixed random linear rule."""

    def __init__(self, size: int = 96, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(size, 8, generator=generator)
        rule = torch.randn(8, 3, generator=torch.Generator().manual_seed(1234))
        self.labels = (self.inputs @ rule).argmax(-1)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        return self.inputs[index], int(self.labels[index])


class TinyClassifier(nn.Module):
    def __init__(self, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 32), nn.GELU())
        self.scale = nn.Parameter(torch.ones(32))  # a vector: trained without weight decay
        self.head = nn.Linear(32, 3)
        for parameter in self.body[0].parameters():
            parameter.requires_grad_(False)  # a frozen part, as after zoo.peft.apply

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.body(batch["x"]) * self.scale)


@dataclass
class PointsTask:
    main_metric: str = "accuracy"
    greater_is_better: bool = True

    def collate(self, examples):
        inputs = torch.stack([x for x, _ in examples])
        return {"x": inputs}, torch.tensor([y for _, y in examples])

    def loss(self, model, batch, labels):
        return F.cross_entropy(model(batch), labels)

    def evaluate(self, model, dataset, batch_size):
        device = next(model.parameters()).device
        correct, total, loss = 0, 0, 0.0
        for start in range(0, len(dataset), batch_size):
            batch, labels = self.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            logits = model({"x": batch["x"].to(device)}).float()
            correct += (logits.argmax(-1).cpu() == labels).sum().item()
            loss += F.cross_entropy(logits.cpu(), labels, reduction="sum").item()
            total += len(labels)
        return {"accuracy": correct / total, "loss": loss / total}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
