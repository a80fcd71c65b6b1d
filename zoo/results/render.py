"""A table's rows -> Markdown and CSV: methods x domains, mean ± 95% interval over seeds, Δ vs full
fine-tuning with a paired test, trainable %, memory, time, and the published number beside ours.
Plots are in :mod:`zoo.results.plots`.

Numbers are the table's metric per domain on the test split, else at the best validation step (the
split is named). The interval is the 95% Student t-interval over the cell's seeds; with one seed
there is none and the cell is marked. A cell is marked better (▲) or worse (▼) than the baseline
where a paired bootstrap over seeds and test rows puts the difference's 95% interval away from 0
(:mod:`zoo.results.stats`). Rows trained on random-weight backbones are marked: they check the
plumbing, not a result.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.experiment.predictions import Predictions, read_predictions
from zoo.results.stats import (
    BETTER,
    INTERVAL_METHOD,
    METRICS,
    TEST_METHOD,
    WORSE,
    PairedResult,
    paired_bootstrap,
    t_interval,
)
from zoo.tasks.metrics import greater_is_better

ONE_SEED = "¹"
RANDOM_INIT_NOTE = "random init: checks the plumbing, not a result"
FIELDS = (
    "domain",
    "method",
    "train_size",
    "train_rows",
    "metric",
    "split",
    "seeds",
    "mean",
    "ci95_half_width",
    "ci95_low",
    "ci95_high",
    "std",
    "interval_method",
    "delta_vs_baseline",
    "delta_ci95_low",
    "delta_ci95_high",
    "delta_p_value",
    "vs_baseline",
    "paired_test",
    "trainable_percent",
    "peak_memory_mib",
    "train_seconds",
    "examples_per_second",
    "steps_to_95pct_best_val",
    "steps_to_95pct_ci95_half_width",
    "published",
    "citation",
    "random_init",
    "not_complete",
)


@dataclass
class Group:
    domain: str | None
    method: str | None
    train_size: int | None
    rows: list[dict[str, Any]]
    _predictions: dict[int, Predictions] | None = field(default=None, repr=False)

    def complete(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == "complete" and r.get("metric_value") is not None]

    def values(self) -> list[float]:
        return [r["metric_value"] for r in self.complete()]

    def mean_std(self) -> tuple[float | None, float | None]:
        values = self.values()
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

    def mean_of(self, key: str) -> float | None:
        values = [r[key] for r in self.complete() if isinstance(r.get(key), (int, float))]
        return statistics.fmean(values) if values else None

    def interval_of(self, key: str) -> float | None:
        """Half-width of the 95% t-interval of ``key`` over the complete runs; None with fewer than two."""
        values = [r[key] for r in self.complete() if isinstance(r.get(key), (int, float))]
        return t_interval(values)[1] if values else None

    def split_predictions(self) -> dict[int, Predictions]:
        """Seed -> the predictions each complete run recorded of the split its metric is reported on."""
        if self._predictions is None:  # read once: the baseline's are compared with every method's
            self._predictions = self._read_predictions()
        return self._predictions

    def _read_predictions(self) -> dict[int, Predictions]:
        found = {}
        for row in self.complete():
            split = row.get("metric_split")
            if not split or not row.get("run_dir") or not isinstance(row.get("seed"), int):
                continue
            files = row.get("predictions")  # absent from rows made before rows named the run's predictions
            if files is not None and split not in files:
                continue
            predictions = read_predictions(row["run_dir"], split)
            if predictions is not None:
                found[row["seed"]] = predictions
        return found


def paired_test(g: Group, base: Group | None, metric: str | None) -> tuple[PairedResult | None, str]:
    """The paired bootstrap of ``g`` against the baseline's group, or None and why there is none."""
    if base is None or base is g:
        return None, ""
    if metric not in METRICS:
        return None, f"no per-example recomputation of {metric}"
    splits = {r.get("metric_split") for r in g.complete() + base.complete()}
    if len(splits) != 1:
        return None, f"the runs report different splits ({', '.join(sorted(map(str, splits)))})"
    mine, theirs = g.split_predictions(), base.split_predictions()
    if not mine or not theirs:
        return None, "no per-example predictions recorded"
    try:
        return paired_bootstrap(mine, theirs, metric, greater_is_better(metric)), ""
    except ValueError as error:
        return None, str(error)


def group(rows: list[dict[str, Any]], spec=None) -> list[Group]:
    """Rows grouped by (domain, method label, training-set size), in the spec's order where there is one."""
    groups: dict[tuple, Group] = {}
    for row in rows:
        key = (row.get("domain"), row.get("method_label"), row.get("train_size"))
        groups.setdefault(key, Group(*key, rows=[])).rows.append(row)
    if spec is not None:
        domains = list(spec.domains)
        methods = [m.label for m in spec.method_entries()]
        order = lambda g: (
            domains.index(g.domain) if g.domain in domains else 99,  # noqa: E731
            methods.index(g.method) if g.method in methods else 99,
            *_size_order(g.train_size),
        )
        return sorted(groups.values(), key=order)
    return sorted(groups.values(), key=lambda g: (str(g.domain), str(g.method), *_size_order(g.train_size)))


def _size_order(train_size: int | None) -> tuple[bool, int]:
    """Training-set sizes ascending, the whole set (``None``) after them."""
    return train_size is None, train_size or 0


def summarise(rows: list[dict[str, Any]], spec=None) -> list[dict[str, Any]]:
    """One record per group with every column of the CSV."""
    groups = group(rows, spec)
    baseline = getattr(spec, "baseline", "full")
    by_key = {(g.domain, g.method, g.train_size): g for g in groups}
    records = []
    for g in groups:
        mean, std = g.mean_std()
        half = t_interval(g.values())[1] if mean is not None else None
        base = by_key.get((g.domain, baseline, g.train_size))
        base_mean = base.mean_std()[0] if base is not None else None
        metric = next((r.get("metric") for r in g.rows if r.get("metric")), None)
        test, why_not = paired_test(g, base, metric) if mean is not None and base_mean is not None else (None, "")
        scale = next((r.get("scale") for r in g.rows if r.get("scale")), None)
        published = spec.published_for(g.method, g.domain, g.train_size, scale) if spec is not None else None
        memory = g.mean_of("peak_memory_bytes")
        splits = sorted({r["metric_split"] for r in g.complete() if r.get("metric_split")})
        not_complete = [
            f"{r.get('status')}: {str(r.get('error') or '').splitlines()[0][:200] if r.get('error') else ''}"
            for r in g.rows
            if r.get("status") != "complete"
        ]
        records.append(
            {
                "domain": g.domain,
                "method": g.method,
                "train_size": g.train_size,
                "train_rows": _one_value(r.get("train_rows") for r in g.complete()),
                "metric": metric,
                "split": "/".join(splits),
                "seeds": len(g.values()),
                "mean": mean,
                "ci95_half_width": half,
                "ci95_low": mean - half if half is not None and mean is not None else None,
                "ci95_high": mean + half if half is not None and mean is not None else None,
                "std": std,
                "interval_method": INTERVAL_METHOD
                if half is not None
                else ("one seed: no interval" if mean is not None else None),
                "delta_vs_baseline": (mean - base_mean)
                if mean is not None and base_mean is not None and g.method != baseline
                else None,
                "delta_ci95_low": test.low if test else None,
                "delta_ci95_high": test.high if test else None,
                "delta_p_value": test.p_value if test else None,
                "vs_baseline": {BETTER: "better", WORSE: "worse", "": "no difference shown"}[test.mark]
                if test
                else None,
                "paired_test": (
                    f"{TEST_METHOD}, {test.seeds} seed(s), {test.rows} {'/'.join(splits)} rows" if test else why_not
                )
                or None,
                "trainable_percent": g.mean_of("trainable_percent"),
                "peak_memory_mib": memory / 2**20 if memory is not None else None,
                "train_seconds": g.mean_of("train_seconds"),
                "examples_per_second": g.mean_of("examples_per_second"),
                "steps_to_95pct_best_val": g.mean_of("steps_to_95pct_best_val"),
                "steps_to_95pct_ci95_half_width": g.interval_of("steps_to_95pct_best_val"),
                "published": published.value if published else None,
                "citation": published.citation if published else None,
                "random_init": any(r.get("random_init") for r in g.rows),
                "not_complete": "; ".join(dict.fromkeys(not_complete)),
                "mark": test.mark if test else "",
            }
        )
    return records


def _one_value(values) -> Any:
    """The value every item shares, or None where they differ or there are none."""
    distinct = set(v for v in values if v is not None)
    return distinct.pop() if len(distinct) == 1 else None


def _size_text(record: dict[str, Any]) -> str:
    """The train-size column: the size asked for, or "all (N)" for a whole training set of N rows."""
    if record["train_size"] is not None:
        return str(record["train_size"])
    return f"all ({record['train_rows']})" if record["train_rows"] is not None else ""


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def mean_interval_text(record: dict[str, Any]) -> str:
    """``0.8123 ± 0.0150`` (95% t-interval), ``0.8123¹`` with one seed; ▲/▼ where the paired test says so."""
    if record["mean"] is None:
        return "n/a" if "n/a" in record["not_complete"] else ("failed" if record["not_complete"] else "")
    text = f"{record['mean']:.4f}"
    if record["ci95_half_width"] is not None:
        text += f" ± {record['ci95_half_width']:.4f}"
    elif record["seeds"] == 1:
        text += ONE_SEED
    if record.get("mark"):
        text += f" {record['mark']}"
    return text + (" †" if record["random_init"] else "")


def _steps_text(record: dict[str, Any]) -> str:
    text = _number(record["steps_to_95pct_best_val"], 0)
    if text and record["steps_to_95pct_ci95_half_width"] is not None:
        text += f" ± {record['steps_to_95pct_ci95_half_width']:.0f}"
    return text


def legend(records: list[dict[str, Any]], baseline: str) -> list[str]:
    """The footer lines that say how to read the numbers, the interval and the marks."""
    seeds = sorted({r["seeds"] for r in records if r["mean"] is not None})
    counted = " over seeds" if len(seeds) != 1 else f" over {seeds[0]} seed" + ("s" if seeds[0] > 1 else "")
    per_cell = f" ({seeds[0]} to {seeds[-1]} a cell: the seeds column)" if len(seeds) > 1 else ""
    notes = [
        f"mean ± 95% t-interval{counted} (Student t, n-1 df){per_cell}: t(0.975, n-1) · s / √n with s the sample "
        f"std over seeds; {ONE_SEED} one seed: no interval.",
        f"{BETTER} better / {WORSE} worse than `{baseline}` in the same column: the 95% interval of the difference "
        f"excludes 0 in a {TEST_METHOD} (seed i paired with seed i, the same rows for both, the metric recomputed on "
        "each resample); no mark: no difference shown, or no test (see the CSV's paired_test column).",
    ]
    if any(r["seeds"] == 1 and r["mark"] for r in records):
        notes.append(f"A mark on a {ONE_SEED} cell covers the test rows only, not the seed.")
    return notes


def _delta_text(record: dict[str, Any]) -> str:
    text = _number(record["delta_vs_baseline"])
    if text and record["delta_ci95_low"] is not None:
        text += f" [{record['delta_ci95_low']:+.4f}, {record['delta_ci95_high']:+.4f}] p={record['delta_p_value']:.3f}"
    return text


def to_csv(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: ("" if record[key] is None else record[key]) for key in FIELDS})
    return buffer.getvalue()


def to_markdown(records: list[dict[str, Any]], spec=None, scale: str = "", command: str = "") -> str:
    name = getattr(spec, "name", "results")
    lines = [f"# {name}" + (f" (scale {scale})" if scale else ""), ""]
    if getattr(spec, "description", ""):
        lines += [spec.description.strip(), ""]
    if command:
        lines += [f"Made with `{command}`.", ""]
    domains = list(dict.fromkeys(r["domain"] for r in records))
    sizes = list(dict.fromkeys(r["train_size"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    by_key = {(r["domain"], r["method"], r["train_size"]): r for r in records}
    metric_of = {d: next((r["metric"] for r in records if r["domain"] == d and r["metric"]), "") for d in domains}
    split_of = {d: next((r["split"] for r in records if r["domain"] == d and r["split"]), "") for d in domains}
    for size in sizes:
        if size is not None:
            lines += [f"## {size:,} training examples", ""]
        elif len(sizes) > 1:
            whole = [
                f"{d} {r['train_rows']:,}"
                for d in domains
                if (r := next((x for x in records if x["domain"] == d and x["train_size"] is None), None))
                and r["train_rows"] is not None
            ]
            lines += ["## All training examples" + (f" ({', '.join(whole)})" if whole else ""), ""]
        header = ["method"] + [f"{d} ({metric_of[d]}, {split_of[d]})" for d in domains]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            cells = []
            for domain in domains:
                record = by_key.get((domain, method, size))
                if record is None:
                    cells.append("")
                    continue
                text = mean_interval_text(record)
                if record["delta_vs_baseline"] is not None:
                    text += f" (Δ {record['delta_vs_baseline']:+.4f})"
                if record["published"] is not None:
                    text += f" [pub. {record['published']:.4f}]"
                cells.append(text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Cost and convergence",
        "",
        "| domain | method | train size | seeds | mean ± 95% CI | Δ vs baseline [95% CI] | trainable % | peak memory MiB | "
        "train s | examples/s | steps to 95% of best val | published |",
        "|" + "---|" * 12,
    ]
    for r in records:
        published = f"{r['published']:.4f} ({r['citation']})" if r["published"] is not None else ""
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["domain"]),
                    str(r["method"]),
                    _size_text(r),
                    str(r["seeds"]),
                    mean_interval_text(r),
                    _delta_text(r),
                    _number(r["trainable_percent"], 3),
                    _number(r["peak_memory_mib"], 0),
                    _number(r["train_seconds"], 1),
                    _number(r["examples_per_second"], 1),
                    _steps_text(r),
                    published,
                ]
            )
            + " |"
        )
    lines.append("")
    notes = []
    if any(r["random_init"] for r in records):
        notes.append(
            f"† {RANDOM_INIT_NOTE}: the backbone had random weights (scale=tiny or backbone.pretrained=false)."
        )
    notes += legend(records, getattr(spec, "baseline", "full"))
    notes.append(
        "Δ: mean of the method minus mean of the baseline; steps to 95% of best val: mean ± 95% t-interval over "
        "seeds; memory is CUDA max allocated on a GPU and peak RSS of the process on a CPU."
    )
    missing = [r for r in records if r["not_complete"]]
    if missing:
        notes.append(
            "Cells without a result: " + "; ".join(f"{r['domain']}/{r['method']}: {r['not_complete']}" for r in missing)
        )
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def render(
    rows: list[dict[str, Any]], folder: Path, spec=None, scale: str = "", command: str = "", plots: bool = True
) -> list[Path]:
    """Write ``<name>.md``, ``<name>.csv`` and the plots into ``folder``; returns the files written."""
    from zoo.files import atomic_write_text

    name = getattr(spec, "name", "results")
    records = summarise(rows, spec)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{name}.md", folder / f"{name}.csv"]
    atomic_write_text(written[0], to_markdown(records, spec, scale, command))
    atomic_write_text(written[1], to_csv(records))
    if plots:
        from zoo.results.plots import plot_all

        written += plot_all(rows, records, folder, name)
    return written
