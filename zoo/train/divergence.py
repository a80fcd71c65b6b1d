"""Stopping a run whose loss is no longer a number (a learning rate far too high, a bf16 overflow).

The loop marks, on the device, the first optimizer step whose loss was not finite, without
waiting for the device every step (no ``.item()`` per step). The mark is read at the points where
a bad loss would otherwise do harm: before the loss is logged, before a validation feeds NaN
scores to a metric, and before a checkpoint would save NaN weights over a good one. A diverged
run therefore stops with one clear error and its last checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from zoo.train.devices import move_to_device
from zoo.train.task import TrainTask, dataset_size


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite at ``step``; the run cannot go on."""

    def __init__(self, step: int, loss: float, lr: float, precision: str, checkpoint_dir: Path) -> None:
        fix = "lower train.lr" + (f" (it is {lr:g})" if lr else "")
        if precision == "bf16":
            fix += ", or train with train.precision=fp32"
        super().__init__(
            f"training diverged at step {step} (loss {loss}): {fix}; the last checkpoint in {checkpoint_dir}, "
            f"if any, is from before it"
        )
        self.step, self.loss = step, loss


class DivergenceWatch:
    """The first step at which the running loss window stopped being finite, kept on the device.

    ``lr``, ``precision`` and ``checkpoint_dir`` are the run's, named in the error's advice."""

    def __init__(self, device: torch.device, lr: float, precision: str, checkpoint_dir: Path) -> None:
        self.first = torch.full((), math.inf, device=device)
        self.checked_step = -1
        self.lr, self.precision, self.checkpoint_dir = lr, precision, checkpoint_dir

    def after_step(self, window_loss: torch.Tensor, step: int) -> None:
        # The window sums every micro-batch loss since the last log: once a loss is NaN or inf the
        # sum stays so, and clamping keeps the first step at which that happened.
        self.first = torch.where(torch.isfinite(window_loss), self.first, self.first.clamp(max=step))

    def first_bad_step(self, distributed: bool) -> int | None:
        """The first non-finite step of any process (a collective under DDP/FSDP), or None."""
        first = self.first.clone()
        if distributed and dist.is_initialized():
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        value = first.item()
        return None if math.isinf(value) else int(value)

    def stop_if_diverged(self, step: int, distributed: bool, window_loss: Callable[[], float]) -> None:
        """Raise TrainingDiverged if a loss since the last check was NaN or infinite (one sync per step at most).

        ``window_loss`` gives the loss the error reports; it is called only then, after the check."""
        if self.checked_step == step:
            return
        self.checked_step = step
        bad_step = self.first_bad_step(distributed)
        if bad_step is not None:
            raise self.error(bad_step, window_loss())

    def error(self, step: int, loss: float) -> TrainingDiverged:
        return TrainingDiverged(step, loss, self.lr, self.precision, self.checkpoint_dir)


def first_batch_loss(
    task: TrainTask,
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> float | None:
    """``model``'s loss on the first batch of ``dataset`` without gradients, on ``device``; None if
    computing it fails (the probe failing says nothing about divergence, so the error that led here stands)."""
    count = min(dataset_size(dataset), batch_size)
    try:
        batch, labels = task.collate([dataset[i] for i in range(count)])
        with torch.no_grad(), autocast():
            batch, labels = move_to_device(batch, device), move_to_device(labels, device)
            return float(task.loss(model, batch, labels).detach().float())
    except Exception:
        return None
