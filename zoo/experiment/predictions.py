"""Per-example test outputs of a run: ``predictions/<split>.npz`` in its run directory.

A paired test of two methods over test rows needs each run's outputs row by row, not only its
metric. When a run's final evaluation scores the test split (with no test split: the validation
split, again, with the best step's weights, which is what a result table then reports), the runner
records what the task's ``evaluate`` scored: for classification the class probabilities (N, C), for regression the
predicted value (N,), each with its target, keyed by the example's index in the split as loaded
(``data.max_eval_examples`` included). Probabilities rather than correctness, so that metrics that
are not a mean over rows (AUROC, Spearman) can be recomputed on a resample of the rows.

Tasks whose outputs are not one row per example (per-residue labels, retrieval's similarity matrix,
generation) write no file; their cells get no paired test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

PREDICTIONS_DIR = "predictions"
KINDS = ("classification", "regression")


def predictions_path(run_dir: str | os.PathLike, split: str = "test") -> Path:
    return Path(run_dir) / PREDICTIONS_DIR / f"{split}.npz"


@dataclass
class Predictions:
    """One split's outputs row by row: ``index`` (N,), ``target`` (N,), ``output`` (N, C) or (N,)."""

    kind: str
    index: np.ndarray
    target: np.ndarray
    output: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"predictions of kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        rows = {len(self.index), len(self.target), len(self.output)}
        if len(rows) != 1:
            raise ValueError(f"predictions need one index, target and output per row; got lengths {sorted(rows)}")


@dataclass
class Capture:
    """What :func:`recording_outputs` saw: the outputs and targets of the last ``evaluate`` of the task."""

    kind: str | None = None
    outputs: Any = None
    targets: Any = None
    note: str = ""
    calls: int = field(default=0)

    def predictions(self) -> Predictions | None:
        if self.kind is None or self.outputs is None:
            return None
        output = self.outputs.detach().float().cpu()
        target = self.targets.detach().cpu().numpy()
        if self.kind == "classification":
            output = output.softmax(-1)  # what the task's AUROC ranks
        else:
            output = output.reshape(len(target), -1)[:, 0]
        return Predictions(self.kind, np.arange(len(target), dtype=np.int64), target, output.numpy())


@contextlib.contextmanager
def recording_outputs(task: Any) -> Iterator[Capture]:
    """Within the block, ``task.spec.evaluate`` (a :class:`zoo.tasks.train_tasks.ModelTask`'s
    :class:`~zoo.tasks.heads.TaskSpec` scoring a whole split) also keeps its outputs and targets in the yielded :class:`Capture`. Any other task is left
    alone and the capture stays empty, with a note saying why."""
    capture = Capture()
    from zoo.tasks.heads import TaskSpec

    spec = getattr(task, "spec", None)
    kind = getattr(spec, "name", None)
    if not isinstance(spec, TaskSpec) or kind not in KINDS or spec.per_token:
        capture.note = f"task {kind or type(task).__name__!r} has no one-output-per-example predictions"
        yield capture
        return
    score = spec.evaluate

    def evaluate(outputs, targets):
        capture.kind, capture.outputs, capture.targets = kind, outputs, targets
        capture.calls += 1
        return score(outputs, targets)

    task.spec = dataclasses.replace(spec, evaluate=evaluate)
    try:
        yield capture
    finally:
        task.spec = spec


def write_predictions(run_dir: str | os.PathLike, split: str, predictions: Predictions) -> Path:
    """``predictions/<split>.npz`` (compressed), written whole or not at all."""
    path = predictions_path(run_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(
        partial,
        kind=np.array(predictions.kind),
        index=predictions.index,
        target=predictions.target,
        output=predictions.output.astype(np.float32),
    )
    partial.replace(path)
    return path


def read_predictions(run_dir: str | os.PathLike, split: str = "test") -> Predictions | None:
    """The run's predictions of ``split``, or None where it recorded none (an older run, another task)."""
    path = predictions_path(run_dir, split)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return Predictions(str(data["kind"]), data["index"], data["target"], data["output"])
