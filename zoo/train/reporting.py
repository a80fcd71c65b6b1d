"""What a run reports while it trains: JSON-lines metrics, TensorBoard events, a progress bar.

Only the process that writes files (rank 0) creates a :class:`RunReporter` with
``enabled=True``; the others get a silent one, so the loop has no rank checks of its own.

Progress goes to stderr: a tqdm bar (steps/s, ETA, loss, examples/s) where someone watches a
terminal, else one plain line per logged step (``train.log_every``) and per validation, which
reads well in a log file or CI; ``show=False`` prints nothing (``zoo.run(..., log=None)``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

logger = logging.getLogger("zoo.train")


class RunReporter:
    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        resumed: bool,
        *,
        show: bool = True,
    ) -> None:
        self.enabled = enabled
        self.metrics_path = run_dir / METRICS_NAME
        self.writer = None
        self.bar = None
        self.postfix: dict[str, str] = {}
        self.total_steps, self.start_step = total_steps, start_step
        self.started = time.perf_counter()
        self.lines = False
        """Plain progress lines on stderr (not a terminal, progress shown)."""
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resumed:
            # Records written after the checkpoint we resume from are replayed by this run; drop them.
            _truncate_after(self.metrics_path, start_step)
        else:
            self.metrics_path.write_text("")
        self.writer = _summary_writer(run_dir / TENSORBOARD_DIR, purge_step=start_step + 1 if resumed else None)
        if not show:
            return
        if sys.stderr.isatty():  # a bar only where someone watches it: in a log file it is a wall of \r
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        else:
            self.lines = True

    def log_train(self, step: int, epoch: float, loss: float, lr: float, examples_per_second: float) -> None:
        if not self.enabled:
            return
        record = {
            "split": "train",
            "step": step,
            "epoch": round(epoch, 4),
            "loss": loss,
            "lr": lr,
            "examples_per_second": round(examples_per_second, 2),
            "time": time.time(),
        }
        self._append(record)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        self.postfix["loss"] = f"{loss:.4g}"
        self.postfix["ex/s"] = f"{examples_per_second:.3g}"
        self._refresh()
        logger.debug("step %d epoch %.2f loss %.4g lr %.3g", step, epoch, loss, lr)
        if self.lines:
            self._say(
                f"step {step}/{self.total_steps} (epoch {epoch:.2f}): loss {loss:.4g}, lr {lr:.3g}, "
                f"{examples_per_second:.1f} examples/s, {self._timing(step)}"
            )

    def log_eval(
        self,
        step: int,
        epoch: float,
        metrics: dict[str, float],
        main_metric: str,
        is_best: bool,
        privacy: dict[str, float] | None = None,
    ) -> None:
        """``privacy``: what a private run has spent so far (``{"epsilon": ...}``), logged beside the metrics."""
        if not self.enabled:
            return
        record = {"split": "val", "step": step, "epoch": round(epoch, 4), **metrics, "best": is_best}
        self._append({**record, **(privacy or {}), "time": time.time()})
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"val/{name}", value, step)
            for name, value in (privacy or {}).items():
                self.writer.add_scalar(f"privacy/{name}", value, step)
            self.writer.flush()
        if main_metric in metrics:
            self.postfix[f"val_{main_metric}"] = f"{metrics[main_metric]:.4g}"
        self._refresh()
        logger.debug("step %d validation %s", step, json.dumps(metrics))
        if self.lines:
            shown = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
            self._say(f"step {step}/{self.total_steps}: validation {shown}{' (best so far)' if is_best else ''}")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def _timing(self, step: int) -> str:
        from tqdm import tqdm

        elapsed = time.perf_counter() - self.started
        done = step - self.start_step
        left = elapsed / done * (self.total_steps - step) if done > 0 else 0.0
        return f"{tqdm.format_interval(elapsed)} elapsed, about {tqdm.format_interval(left)} left"

    @staticmethod
    def _say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)

    def _append(self, record: dict[str, Any]) -> None:
        clean = {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in record.items()
        }
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")


def _summary_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # declared as a dependency; a broken install should not stop training
        warnings.warn(
            "tensorboard is not installed: no TensorBoard events are written (pip install tensorboard)", stacklevel=2
        )
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if record.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/metrics.jsonl``."""
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
