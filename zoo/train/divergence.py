"""Stopping a run whose loss is no longer a number (a learning rate far too high, a bf16 overflow).

The loop marks, on the device, the first optimizer step whose loss was not finite, without
waiting for the device every step (no ``.item()`` per step). The mark is read at the points where
a bad loss would otherwise do harm: before the loss is logged, before a validation feeds NaN
scores to a metric, and before a checkpoint would save NaN weights over a good one. A diverged
run therefore stops with one clear error and its last checkpoint untouched.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist


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
    """The first step at which the running loss window stopped being finite, kept on the device."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), math.inf, device=device)

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
