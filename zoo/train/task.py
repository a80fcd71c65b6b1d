"""What the trainer needs to know about a task: how to batch, score and evaluate it.

The trainer is agnostic of domains and model kinds; a :class:`TrainTask` supplies the
pieces that differ. Composition, not inheritance: any object with these members works.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, Sized, cast, runtime_checkable

import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.errors import ConfigError


@runtime_checkable
class TrainTask(Protocol):
    main_metric: str
    """Key of ``evaluate``'s result that early stopping and the best checkpoint follow."""
    greater_is_better: bool

    def collate(self, examples: Sequence[Any]) -> tuple[Any, Any]:
        """A list of dataset items -> ``(batch, labels)``; tensors anywhere inside are moved to the device."""
        ...

    def loss(self, model: nn.Module, batch: Any, labels: Any) -> torch.Tensor:
        """The scalar training loss (mean over the batch).

        ``model`` may be a DistributedDataParallel wrapper: compute the outputs by CALLING
        it (``model(batch)``) so that gradients are synchronised; its other attributes
        (e.g. ``model.loss``) are forwarded to the wrapped model.
        """
        ...

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
        """Metrics over the whole ``dataset`` (the model is in eval mode, gradients off).

        Batches go to the model's device (``zoo.train.move_to_device(batch, device)``). Under
        several processes every process evaluates the whole dataset (FSDP needs them all).
        """
        ...

    # Optional: ``example_lengths(dataset) -> list[int] | None``, one length per example (None when the
    # inputs have none), for ``train.group_by_length``; see :func:`example_lengths`.


def example_lengths(task: TrainTask, dataset: Dataset) -> list[int]:
    """One length per example of ``dataset`` (e.g. its token count), from the task's optional
    ``example_lengths(dataset)``, for batching examples of similar length together."""
    measure = getattr(task, "example_lengths", None)
    lengths = measure(dataset) if measure is not None else None
    if lengths is None:
        raise ConfigError(
            f"train.group_by_length=true: task {type(task).__name__} cannot measure its examples (it has no "
            "example_lengths(dataset), or its inputs have no length); set train.group_by_length to false"
        )
    if len(lengths) != dataset_size(dataset):
        raise ValueError(
            f"{type(task).__name__}.example_lengths gave {len(lengths)} lengths for {dataset_size(dataset)} examples"
        )
    return [int(length) for length in lengths]


def dataset_size(dataset: Dataset) -> int:
    """The number of examples in ``dataset``.

    Every dataset the trainer takes is map-style and has a length; torch's ``Dataset`` type
    does not declare ``__len__``, so the length is read through ``Sized``.
    """
    return len(cast(Sized, dataset))
