"""What a finished (or early-stopped) training run reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    best_metric: float | None
    """Best validation value of the task's main metric; None when nothing was evaluated."""
    best_step: int | None
    """Optimizer step at which ``best_metric`` was reached."""
    steps: int
    """Optimizer steps done in total (across resumes)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record per evaluation: ``{"step", "epoch", <metric>: value, ...}``."""
    main_metric: str = ""
    best_metrics: dict[str, float] = field(default_factory=dict)
    """Every validation metric at the best step."""
    final_metrics: dict[str, float] = field(default_factory=dict)
    """Validation metrics of the last evaluation."""
    train_loss: float | None = None
    """Mean training loss over the last logging window."""
    stopped_early: bool = False
    epochs: float = 0.0
    """Epochs done (fractional when max_steps stopped mid-epoch)."""
    best_checkpoint: Path | None = None
    run_dir: Path | None = None
    train_seconds: float = 0.0
    """Wall time of this process's fit() call (not summed over resumes)."""
    privacy: dict[str, Any] | None = None
    """A private run's epsilon spent and its mechanism (:meth:`zoo.train.privacy.PrivacyPlan.spent`); else None."""
