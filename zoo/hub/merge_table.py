"""The merge table: how much of each task a merged adapter keeps.

``merge_table(["text/sst2-lora", "text/agnews-lora"], out)`` evaluates every input adapter on its own
task's test split (the single-task row), merges all of them with each :class:`MergeSetting` (one merge
per seed for DARE's random drop; :func:`zoo.hub.merging.merge_runs`), evaluates each merged
task head on the same rows, and writes ``merge.md`` and ``merge.csv``: each task's metric, its 95%
interval, and the difference from the single-task adapter with the paired bootstrap's interval over
the test rows (and the seeds, for DARE). Every merge and every evaluation is kept under ``out``
(``merges/``, ``evaluations/``), so an interrupted table resumes where it stopped; ``evaluations/`` alone
(each evaluation's numbers and per-row predictions, no weights) is enough to render the table again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.experiment.predictions import Predictions


@dataclass(frozen=True)
class MergeSetting:
    """One row group of the table: ``method`` with the same ``weight`` for every adapter."""

    label: str
    method: str
    weight: float
    density: float | None = None
    seeds: tuple[int, ...] = (0,)

    @property
    def key(self) -> str:
        density = f"-d{self.density:g}" if self.density is not None else ""
        return f"{self.method}-w{self.weight:g}{density}"


SETTINGS = (
    MergeSetting("average (linear, 0.5 each)", "linear", 0.5),
    MergeSetting("task arithmetic (linear, 1.0 each)", "linear", 1.0),
    MergeSetting("TIES (top 20%, 1.0 each)", "ties", 1.0, 0.2),
    MergeSetting("DARE linear (keep 20%, 0.5 each)", "dare_linear", 0.5, 0.2, (0, 1, 2)),
    MergeSetting("DARE TIES (keep 20%, 1.0 each)", "dare_ties", 1.0, 0.2, (0, 1, 2)),
    MergeSetting("SVD (average cut to rank 8)", "svd", 0.5),
)
SINGLE = "single-task adapter"


@dataclass
class Measured:
    setting: str
    task: str
    seed: int | None
    metric: str
    value: float
    examples: int
    predictions: Predictions | None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")


def _evaluated(
    folder: Path, target: str | os.PathLike, evaluate_one: Callable[[str | os.PathLike], Any]
) -> tuple[str, str, float, int, Predictions | None]:
    """(task, metric, value, examples, predictions) of ``target`` on its test split, kept in ``folder``."""
    from zoo.experiment.predictions import read_predictions, write_predictions
    from zoo.files import atomic_write_text

    summary = folder / "evaluation.json"
    if summary.is_file():
        kept = json.loads(summary.read_text())
        return kept["task"], kept["metric"], kept["value"], kept["examples"], read_predictions(folder, "test")
    result = evaluate_one(target)
    if result.predictions is not None:
        write_predictions(folder, "test", result.predictions)
    value = result.metrics[result.main_metric]
    atomic_write_text(
        summary,
        json.dumps(
            {
                "target": str(target),
                "task": result.dataset,
                "metric": result.main_metric,
                "value": value,
                "examples": result.examples,
                "metrics": result.metrics,
            },
            indent=2,
        ),
    )
    return result.dataset, result.main_metric, value, result.examples, result.predictions


MANIFEST = "table.json"
"""In ``out``: the adapters its merges and evaluations are of, so a table of others is never read from them."""


def _claim(out: Path, adapters: list[str], write: bool = False) -> None:
    """Refuse an ``out`` that holds another table's work; with ``write``, record that it holds ``adapters``'."""
    from zoo.errors import ConfigError
    from zoo.files import atomic_write_text

    manifest = out / MANIFEST
    if manifest.is_file():
        held = json.loads(manifest.read_text()).get("adapters")
        if held != adapters:
            raise ConfigError(
                f"{out} holds the merge table of {held}, not of {adapters}: its merges and evaluations would be "
                f"reused for other adapters; give another --out"
            )
        return
    # the single-task evaluations are kept by adapter name and safe to reuse; merges are written after the claim
    merged_work = [p for p in (out / "evaluations").glob("*") if p.name != "single"] + list((out / "merges").glob("*"))
    if not write and merged_work:
        raise ConfigError(f"{out} holds merges but no {MANIFEST} saying of which adapters; give another --out")
    if not write:
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest, json.dumps({"adapters": adapters}, indent=2) + "\n")


def measure(
    adapters: Sequence[str],
    out: str | os.PathLike,
    settings: Sequence[MergeSetting] = SETTINGS,
    hub: str | None = None,
    data_root: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> list[Measured]:
    """Every evaluation of the table (reusing what ``out`` already holds)."""
    from zoo.errors import ConfigError
    from zoo.hub.evaluate import evaluate
    from zoo.hub.merging import merge_runs

    if len(adapters) < 2:
        raise ConfigError("a merge table needs at least two adapters")
    out = Path(out)
    _claim(out, list(adapters))

    def evaluate_one(target: str | os.PathLike) -> Any:
        return evaluate(target, "test", data_root, hub=hub, backbone_weights=backbone_weights, log=None)

    measured = []
    for adapter in adapters:
        task, metric, value, examples, predictions = _evaluated(
            out / "evaluations" / "single" / _slug(adapter), adapter, evaluate_one
        )
        log(f"{SINGLE} {adapter}: {task} {metric} {value:.4f}")
        measured.append(Measured(SINGLE, task, None, metric, value, examples, predictions))
    tasks = [m.task for m in measured]
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"a merge table takes one adapter per task; the adapters' tasks are {tasks}")
    _claim(out, list(adapters), write=True)  # once every adapter has been read and scored
    for setting in settings:
        for seed in setting.seeds:
            name = f"{setting.key}-seed{seed}" if len(setting.seeds) > 1 else setting.key
            merged = out / "merges" / name
            evaluated = all((out / "evaluations" / name / task / "evaluation.json").is_file() for task in tasks)
            if not merged.is_dir() and not evaluated:  # the evaluations alone are enough to render again
                merge_runs(
                    list(adapters),
                    [setting.weight] * len(adapters),
                    merged,
                    setting.method,
                    density=setting.density,
                    seed=seed,
                    hub=hub,
                    backbone_weights=backbone_weights,
                    command=f"zoo merge {' '.join(adapters)} --weights {','.join([f'{setting.weight:g}'] * len(adapters))}"
                    f" --method {setting.method}"
                    + (f" --density {setting.density:g}" if setting.density is not None else "")
                    + (f" --seed {seed}" if setting.method.startswith("dare") else ""),
                )
            for task in tasks:
                task_dir = merged / task
                _, metric, value, examples, predictions = _evaluated(
                    out / "evaluations" / name / task, task_dir, evaluate_one
                )
                log(f"{setting.label} seed {seed}: {task} {metric} {value:.4f}")
                seed_of = seed if len(setting.seeds) > 1 else None
                measured.append(Measured(setting.label, task, seed_of, metric, value, examples, predictions))
    return measured


def summarise(measured: list[Measured]) -> list[dict[str, Any]]:
    """One record per (setting, task): mean over seeds, the interval, and the paired test against the single adapter."""
    from zoo.results.stats import paired_bootstrap, row_interval, t_interval
    from zoo.tasks.metrics import greater_is_better

    singles = {m.task: m for m in measured if m.setting == SINGLE}
    records = []
    for label in dict.fromkeys(m.setting for m in measured):
        for task, single in singles.items():
            runs = [m for m in measured if m.setting == label and m.task == task]
            if not runs:
                continue
            values = [m.value for m in runs]
            mean = float(np.mean(values))
            record: dict[str, Any] = {
                "setting": label,
                "task": task,
                "metric": single.metric,
                "test_rows": single.examples,
                "seeds": len(runs),
                "values": values,
                "mean": mean,
                "low": None,
                "high": None,
                "interval": "",
                "delta": None,
                "delta_low": None,
                "delta_high": None,
                "p_value": None,
                "retained": mean / single.value if single.value else None,
            }
            if len(runs) > 1:
                _, half = t_interval(values)
                if half is not None:
                    record.update(low=mean - half, high=mean + half, interval="95% t-interval over seeds")
            elif runs[0].predictions is not None:
                low, high = row_interval(runs[0].predictions, single.metric)
                record.update(low=low, high=high, interval="95% bootstrap over test rows")
            mine = {m.seed or 0: m.predictions for m in runs if m.predictions is not None}
            if label != SINGLE and single.predictions is not None and len(mine) == len(runs):
                test = paired_bootstrap(
                    mine, dict.fromkeys(mine, single.predictions), single.metric, greater_is_better(single.metric)
                )
                record.update(delta=test.difference, delta_low=test.low, delta_high=test.high, p_value=test.p_value)
            records.append(record)
    return records


def to_markdown(records: list[dict[str, Any]], heading: str, notes: Sequence[str] = ()) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in records))
    settings = list(dict.fromkeys(r["setting"] for r in records))
    by_key = {(r["setting"], r["task"]): r for r in records}
    metric = {t: by_key[(settings[0], t)]["metric"] for t in tasks}
    lines = [heading, ""]
    header = ["merge", *(f"{t} ({metric[t]}, {by_key[(settings[0], t)]['test_rows']} test rows)" for t in tasks)]
    lines += ["| " + " | ".join([*header, "mean over tasks", "kept of single-task"]) + " |"]
    lines += ["|" + "---|" * (len(header) + 2)]
    for setting in settings:
        cells = []
        for task in tasks:
            r = by_key.get((setting, task))
            if r is None:
                cells.append("")
                continue
            text = f"{r['mean']:.4f}"
            if r["low"] is not None:
                text += f" [{r['low']:.4f}, {r['high']:.4f}]"
            if r["delta"] is not None:
                separated = r["delta_low"] > 0 or r["delta_high"] < 0
                text += f" (Δ {r['delta']:+.4f} [{r['delta_low']:+.4f}, {r['delta_high']:+.4f}]{'' if separated else ', n.s.'})"
            cells.append(text)
        mine = [by_key[(setting, t)] for t in tasks if (setting, t) in by_key]
        average = np.mean([r["mean"] for r in mine])
        kept = np.mean([r["retained"] for r in mine if r["retained"] is not None])
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {average:.4f} | {100 * kept:.1f}% |")
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


FIELDS = (
    "setting", "task", "metric", "test_rows", "seeds", "values", "mean", "low", "high", "interval",
    "delta", "delta_low", "delta_high", "p_value", "retained",
)  # fmt: skip


def to_csv(records: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = {k: ("" if record[k] is None else record[k]) for k in FIELDS}
        row["values"] = " ".join(f"{v:.6f}" for v in record["values"])
        writer.writerow(row)
    return buffer.getvalue()


LEGEND = (
    "Each cell: the task's test metric of the merged adapter, with its own task head; [low, high]: 95% percentile "
    "bootstrap over the test rows (1,000 resamples) for one merge, the 95% Student t-interval over seeds for "
    "DARE's three seeds (the mean is over them).",
    "Δ: merged minus the single-task adapter on the same rows, with the 95% interval of a paired bootstrap over the "
    "test rows (and the seeds, for DARE); n.s.: the interval contains 0.",
    "kept of single-task: the merged metric over the single-task adapter's, averaged over the tasks.",
)


def render(measured: list[Measured], to: str | os.PathLike, heading: str, notes: Sequence[str] = ()) -> list[Path]:
    from zoo.files import atomic_write_text

    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    records = summarise(measured)
    written = [to / "merge.md", to / "merge.csv"]
    atomic_write_text(written[0], to_markdown(records, heading, [*LEGEND, *notes]))
    atomic_write_text(written[1], to_csv(records))
    return written
