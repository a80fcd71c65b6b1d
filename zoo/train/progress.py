"""Where a run is: its step and data position, its best validation so far and its early-stopping count.

A :class:`RunProgress` is saved in every checkpoint (as a plain dict) and rebuilt from it on resume,
so everything the loop needs to carry on exactly lives here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.train.result import TrainResult

logger = logging.getLogger("zoo.train")


@dataclass
class RunProgress:
    """Where the run is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    micro: int = 0
    """Micro-batches of the current epoch already consumed (by each process)."""
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    evals_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    train_loss: float | None = None
    window_micro: int = 0
    """Micro-batches in the current logging window (their summed loss is per process, saved with the RNG)."""

    def record_validation(
        self,
        metrics: dict[str, float],
        epochs: float,
        main_metric: str,
        greater_is_better: bool,
        patience: int | None,
    ) -> bool:
        """Add a validation at the current step to the history; True if it is the best so far.

        ``patience`` validations in a row without improvement set ``stopped_early``."""
        value = metrics[main_metric]
        best = self.best_metric
        improved = math.isfinite(value) and (best is None or (value > best if greater_is_better else value < best))
        self.history.append({"step": self.step, "epoch": epochs, **metrics})
        if improved:
            self.best_metric, self.best_step, self.best_metrics = value, self.step, metrics
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
            if patience is not None and self.evals_without_improvement >= patience:
                self.stopped_early = True
                logger.info(
                    "early stopping at step %d: %s has not improved for %d evaluations",
                    self.step,
                    main_metric,
                    patience,
                )
        return improved

    def result(
        self, main_metric: str, epochs: float, best_checkpoint: Path, run_dir: Path, seconds: float
    ) -> TrainResult:
        """The run's :class:`TrainResult`; ``best_checkpoint`` is reported only if a best step was saved."""
        final = {k: v for k, v in self.history[-1].items() if k not in ("step", "epoch")} if self.history else {}
        return TrainResult(
            best_metric=self.best_metric,
            best_step=self.best_step,
            steps=self.step,
            history=list(self.history),
            main_metric=main_metric,
            best_metrics=dict(self.best_metrics),
            final_metrics=final,
            train_loss=self.train_loss,
            stopped_early=self.stopped_early,
            epochs=epochs,
            best_checkpoint=best_checkpoint if self.best_step is not None else None,
            run_dir=run_dir,
            train_seconds=seconds,
        )
