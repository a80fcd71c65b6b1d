"""One row per run: what ran, what it scored, what it cost, and where it came from.

A row is made from a run directory alone (``zoo results add`` takes any run, ``zoo train`` ones
too): its record (``run.json``, :class:`zoo.experiment.record.RunRecord`), its configuration and
metrics, plus, for a table cell, the cell's coordinates. The package versions are those the run
recorded when it ended; the git commit, whether the tree was dirty, and the hardware are those of
the process making the row, which for a table cell is the process that trained it;
``provenance_from`` says which.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from zoo import __version__
from zoo.experiment.machine import hardware

CONVERGENCE_FRACTION = 0.95


@functools.cache
def git_state() -> dict[str, Any]:
    """The commit of the zoo checkout and whether it had uncommitted changes (None outside git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def provenance(source: str, versions: dict[str, str] | None = None) -> dict[str, Any]:
    """``versions``: the packages a run recorded (default: this process's)."""
    from zoo.experiment.record import package_versions

    return {
        "zoo_version": (versions or {}).get("zoo", __version__),
        **git_state(),
        "packages": versions or package_versions(),
        "hardware": hardware(),
        "provenance_from": source,
    }


def validation_curve(history: list[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every validation evaluation of ``metric``, in the order they were logged."""
    return [
        (row["step"], row[metric])
        for row in history
        if row.get("split") == "val" and isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])
    ]


def steps_to_fraction_of_best(
    history: list[dict[str, Any]], metric: str, greater_is_better: bool, fraction: float = CONVERGENCE_FRACTION
) -> int | None:
    """The first evaluated step whose ``metric`` is within ``1 - fraction`` of the run's best value (relative to
    its magnitude, so it works for negative Spearman and lower-is-better losses alike)."""
    points = validation_curve(history, metric)
    if not points:
        return None
    values = [value for _, value in points]
    best = max(values) if greater_is_better else min(values)
    slack = (1 - fraction) * abs(best)
    for step, value in points:
        if (value >= best - slack) if greater_is_better else (value <= best + slack):
            return step
    return None


def _predictions_files(run_dir: Path) -> dict[str, str]:
    """Split -> its per-example outputs file (``predictions/<split>.npz``) relative to the run directory."""
    from zoo.experiment.predictions import PREDICTIONS_DIR

    folder = run_dir / PREDICTIONS_DIR
    files = sorted(path for path in folder.glob("*.npz") if ".partial" not in path.name)
    return {path.stem: path.relative_to(run_dir).as_posix() for path in files}


def _train_rows(record: Any) -> int | None:
    """How many training examples the run drew from (the split's rows after any ``max_train_examples``)."""
    split = record.data.splits.get("train") if record.data else None
    if split is None:
        return None
    return split.rows_used if split.rows_used is not None else split.rows


def _adapter_bytes(run_dir: Path) -> int | None:
    folder = run_dir / "adapter"
    if not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _examples_per_second(history: list[dict[str, Any]], training: Any, train: dict[str, Any]) -> float | None:
    logged = [
        row["examples_per_second"] for row in history if row.get("split") == "train" and row.get("examples_per_second")
    ]
    if logged:
        return round(sum(logged) / len(logged), 2)
    seconds, steps = (training.seconds, training.steps) if training else (None, None)
    if seconds and steps:
        return round(steps * train.get("batch_size", 1) * train.get("grad_accum", 1) / seconds, 2)
    return None


def row_from_run(run_dir: str | os.PathLike, cell: dict[str, Any] | None = None, source: str = "add") -> dict[str, Any]:
    """The store's row of a run directory (any status); ``cell`` adds a table cell's coordinates.

    The main metric is the one the run recorded (its task's, which chose the best checkpoint); a run that
    did not complete has none unless its configuration names one (``task.main_metric``)."""
    from zoo.experiment import run_dir as runs
    from zoo.experiment.yaml_files import read_yaml
    from zoo.results.cells import config_hash
    from zoo.tasks.train_tasks import greater_is_better
    from zoo.train.reporting import read_metrics

    run_dir = Path(run_dir).resolve()
    config = read_yaml(run_dir / runs.CONFIG_FILE)
    record = runs.read_record(run_dir)
    results = runs.read_json(run_dir / runs.EVAL_FILE)
    try:
        history = read_metrics(run_dir)
    except json.JSONDecodeError:
        history = []
    train, backbone = config.get("train", {}), config.get("backbone", {})
    main_metric = record.main_metric or (config.get("task") or {}).get("main_metric")
    better = record.task.greater_is_better if record.task else None
    if better is None and main_metric:
        better = greater_is_better(main_metric)
    parameters, training, memory = record.parameters, record.training, record.memory
    trainable = parameters.trainable if parameters else None
    total = parameters.total if parameters else None
    row: dict[str, Any] = {
        "run_dir": str(run_dir),
        "status": record.status,
        "error": record.error,
        "recipe": record.recipe,
        "command": record.command,
        "config_hash": config_hash(config),
        "config": config,
        "scale_setting": config.get("scale"),
        "backbone": backbone.get("name"),
        "random_init": config.get("scale") == "tiny" or backbone.get("pretrained") is False,
        "method": (config.get("method") or {}).get("name"),
        "seed": train.get("seed"),
        "train_size": (config.get("data") or {}).get("max_train_examples"),
        "dataset": (config.get("data") or {}).get("name"),
        "data_splits": {role: split.model_dump(exclude_none=True) for role, split in record.data.splits.items()}
        if record.data
        else None,
        "metrics": {split: entry.get("metrics", {}) for split, entry in results.items()},
        "predictions": _predictions_files(run_dir),
        "main_metric": main_metric,
        "best_val_metric": training.best_metric if training else None,
        "steps": training.steps if training else None,
        "val_curve": [list(point) for point in validation_curve(history, main_metric)] if main_metric else [],
        "train_rows": _train_rows(record),
        "steps_to_95pct_best_val": (
            steps_to_fraction_of_best(history, main_metric, better) if main_metric and better is not None else None
        ),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100 * trainable / total if trainable is not None and total else None,
        "parameter_reduction_percent": 100 * (1 - trainable / total) if trainable is not None and total else None,
        "adapter_bytes": _adapter_bytes(run_dir),
        "peak_memory_bytes": memory.peak_bytes if memory else None,
        "peak_memory_kind": memory.kind if memory else None,
        "train_seconds": training.seconds if training else None,
        "examples_per_second": _examples_per_second(history, training, train),
        "started": record.started,
        "finished": record.finished,
        **provenance(source, record.versions or None),
    }
    if cell is not None:
        row.update(cell_fields(cell))
    else:
        row.update(
            table=None,
            scale=None,
            cell=None,
            domain=record.backbone.domain if record.backbone else _domain_of(backbone.get("name")),
            method_label=row["method"],
            metric=main_metric,
        )
    row["metric_split"], row["metric_value"] = reported_metric(row)
    return row


def cell_fields(cell: dict[str, Any]) -> dict[str, Any]:
    from zoo.results.cells import Cell

    coordinates = Cell(**cell)
    return {
        "table": coordinates.table,
        "scale": coordinates.scale,
        "cell": coordinates.id,
        "domain": coordinates.domain,
        "method_label": coordinates.method_label,
        "method": coordinates.method,
        "seed": coordinates.seed,
        "train_size": coordinates.train_size,
        "metric": coordinates.metric,
        "config_hash": coordinates.config_hash,
    }


def cell_row(cell: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    """The row of a cell that left no run: ``n/a`` (the method does not apply) or ``failed`` before it started."""
    config = cell.get("config", {})
    row = {
        "run_dir": str(Path(cell["dir"]).resolve()),
        "status": status,
        "error": reason,
        "config": config,
        "recipe": cell["recipe"],
        "dataset": (config.get("data") or {}).get("name"),
        "backbone": (config.get("backbone") or {}).get("name"),
        "metrics": {},
        "random_init": config.get("scale") == "tiny" or (config.get("backbone") or {}).get("pretrained") is False,
        **cell_fields(cell),
        **provenance("reproduce"),
    }
    row["metric_split"], row["metric_value"] = None, None
    return row


def reported_metric(row: dict[str, Any]) -> tuple[str | None, float | None]:
    """The table's number for a run: its metric on the test split, else at the best validation step."""
    for split in ("test", "val"):
        value = (row.get("metrics") or {}).get(split, {}).get(row.get("metric") or "")
        if isinstance(value, (int, float)):
            return split, float(value)
    return None, None


def _domain_of(backbone: str | None) -> str | None:
    if backbone is None:
        return None
    try:
        from zoo.catalog.backbones import BACKBONES

        return getattr(BACKBONES.get(backbone), "domain", None)
    except Exception:  # an unregistered backbone still gets a row
        return None
