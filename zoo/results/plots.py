"""PNG plots of a table (matplotlib, Agg backend: no display needed).

- ``<name>-metric-vs-parameters.png``: the metric against trainable parameters (log x), one panel per domain;
- ``<name>-memory-time.png``: peak memory and training time per method;
- ``<name>-data-scale.png`` (tables with several training-set sizes): the metric and the steps to reach
  95% of the best validation metric against the training-set size, one line per method, with the 95%
  t-interval over seeds as error bars (a whole training set sits at its number of rows);
- ``<name>-convergence.png`` (the same tables): the validation metric against the step, one panel per domain
  and training-set size, one line per method: the mean over seeds with the seeds' range shaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(rows: list[dict[str, Any]], records: list[dict[str, Any]], folder: Path, name: str) -> list[Path]:
    plt = _pyplot()
    written = []
    complete = [r for r in rows if r.get("status") == "complete" and r.get("metric_value") is not None]
    domains = list(dict.fromkeys(r["domain"] for r in records))
    if complete and domains:
        figure, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.5), squeeze=False)
        for axis, domain in zip(axes[0], domains):
            for method in dict.fromkeys(r["method_label"] for r in complete if r["domain"] == domain):
                points = [
                    (r["trainable_parameters"], r["metric_value"])
                    for r in complete
                    if r["domain"] == domain and r["method_label"] == method and r.get("trainable_parameters")
                ]
                if points:
                    axis.scatter(*zip(*points), label=method, s=18)
            axis.set_xscale("log")
            axis.set_xlabel("trainable parameters")
            axis.set_ylabel(next((r["metric"] for r in records if r["domain"] == domain), "metric"))
            axis.set_title(domain)
        axes[0][-1].legend(fontsize=6, loc="best")
        figure.tight_layout()
        written.append(_save(figure, folder / f"{name}-metric-vs-parameters.png", plt))
    methods = list(dict.fromkeys(r["method"] for r in records))
    if records:
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
        for axis, key, label in (
            (left, "peak_memory_mib", "peak memory (MiB)"),
            (right, "train_seconds", "train time (s)"),
        ):
            for index, domain in enumerate(domains):
                values = [
                    next((r[key] or 0 for r in records if r["domain"] == domain and r["method"] == m), 0)
                    for m in methods
                ]
                width = 0.8 / max(len(domains), 1)
                axis.bar([i + index * width for i in range(len(methods))], values, width=width, label=domain)
            axis.set_xticks(
                [i + 0.4 - 0.4 / max(len(domains), 1) for i in range(len(methods))], methods, rotation=60, fontsize=7
            )
            axis.set_ylabel(label)
        left.legend(fontsize=6)
        figure.tight_layout()
        written.append(_save(figure, folder / f"{name}-memory-time.png", plt))
    sizes = list(dict.fromkeys(r["train_size"] for r in records))
    if len(sizes) > 1:
        figure, axes = plt.subplots(2, len(domains), figsize=(4 * len(domains), 6), squeeze=False)
        for column, domain in enumerate(domains):
            for method in methods:
                line = sorted(
                    (
                        _size_of(r),
                        r["mean"],
                        r["ci95_half_width"] or 0,
                        r["steps_to_95pct_best_val"] or 0,
                        r["steps_to_95pct_ci95_half_width"] or 0,
                    )
                    for r in records
                    if r["domain"] == domain
                    and r["method"] == method
                    and _size_of(r) is not None
                    and r["mean"] is not None
                )
                if line:  # error bars: the 95% t-interval over seeds (none with one seed)
                    sizes_, means, halves, steps, step_halves = (list(column_) for column_ in zip(*line))
                    axes[0][column].errorbar(sizes_, means, yerr=halves, marker="o", capsize=3, label=method)
                    axes[1][column].errorbar(sizes_, steps, yerr=step_halves, marker="o", capsize=3, label=method)
            for row, label in ((0, "metric, mean ± 95% CI"), (1, "steps to 95% of best val ± 95% CI")):
                axes[row][column].set_xscale("log")
                axes[row][column].set_xlabel("training examples")
                axes[row][column].set_ylabel(label)
            axes[0][column].set_title(domain)
        axes[0][-1].legend(fontsize=6)
        figure.tight_layout()
        written.append(_save(figure, folder / f"{name}-data-scale.png", plt))
        written.append(_convergence(complete, domains, methods, sizes, folder / f"{name}-convergence.png", plt))
    return written


def _size_of(record: dict[str, Any]) -> int | None:
    """Where a table record sits on the training-examples axis: its size, or the rows of a whole training set."""
    return record["train_size"] if record["train_size"] is not None else record.get("train_rows")


def seed_band(curves: list[list[list[float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps every seed evaluated at, and the mean, lowest and highest of the seeds' values there."""
    by_step = [{int(step): value for step, value in curve} for curve in curves]
    steps = sorted(set.intersection(*(set(curve) for curve in by_step)))
    values = [[curve[step] for curve in by_step] for step in steps]
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _convergence(rows, domains, methods, sizes, path: Path, plt) -> Path:
    """The validation metric against the step: mean over seeds (line) and the seeds' range (shaded)."""
    figure, axes = plt.subplots(
        len(sizes), len(domains), figsize=(4 * len(domains), 2.8 * len(sizes)), squeeze=False, sharex="col"
    )
    for column, domain in enumerate(domains):
        for row_index, size in enumerate(sizes):
            axis = axes[row_index][column]
            for method in methods:
                curves = [
                    r["val_curve"]
                    for r in rows
                    if r["domain"] == domain
                    and r["method_label"] == method
                    and r["train_size"] == size
                    and r.get("val_curve")
                ]
                if not curves:
                    continue
                steps, mean, low, high = seed_band(curves)
                axis.plot(steps, mean, marker=".", label=f"{method} ({len(curves)} seeds)")
                if len(curves) > 1:
                    axis.fill_between(steps, low, high, alpha=0.2)
            metric = next((r["metric"] for r in rows if r["domain"] == domain and r.get("metric")), "metric")
            axis.set_title(f"{domain}, {'all' if size is None else f'{size:,}'} training examples", fontsize=9)
            axis.set_ylabel(f"val {metric}", fontsize=8)
            if row_index == len(sizes) - 1:
                axis.set_xlabel("step")
            if axis.lines:
                axis.legend(fontsize=6)
    figure.tight_layout()
    return _save(figure, path, plt)


def _save(figure, path: Path, plt) -> Path:
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
