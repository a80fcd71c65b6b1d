"""The training loop (work in progress: the signatures are final)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.train.result import TrainResult
from zoo.train.settings import TrainSettings
from zoo.train.task import TrainTask


def move_to_device(value: Any, device: torch.device | str) -> Any:
    """Tensors anywhere inside dicts, lists and tuples moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: move_to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move_to_device(item, device) for item in value)
    return value


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        task: TrainTask,
        train_set: Dataset,
        val_set: Dataset | None,
        settings: TrainSettings,
        run_dir: str | os.PathLike,
        *,
        callbacks: Sequence[Callable[["Trainer", int], None]] = (),
    ) -> None:
        self.model = model
        self.task = task
        self.train_set = train_set
        self.val_set = val_set
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)

    def fit(self, resume: bool = False) -> TrainResult:
        raise NotImplementedError

    def evaluate(self, dataset: Dataset) -> dict[str, float]:
        raise NotImplementedError
