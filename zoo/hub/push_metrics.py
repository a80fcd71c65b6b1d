"""What a pushed entry states about its test metric beyond the number: its interval over the test rows,
and how it compares with full fine-tuning of the same backbone on the same data.

Both come from the runs' per-example test outputs (``predictions/test.npz``,
:mod:`zoo.experiment.predictions`) and the statistics of the result tables (:mod:`zoo.results.stats`):
the interval is a percentile bootstrap over the test rows; the comparison is the tables' paired
bootstrap over the same rows (one seed each), so "not separated" on a card means what it means in a
table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.errors import HubError


def test_interval(run_dir: Path, metric: str) -> dict[str, Any] | None:
    """The main metric's bootstrap interval over the run's test rows, where the run recorded them and the
    metric can be recomputed row by row; else None."""
    from zoo.experiment.predictions import read_predictions
    from zoo.results.stats import METRICS, ROW_INTERVAL_METHOD, row_interval

    predictions = read_predictions(run_dir, "test")
    if predictions is None or metric not in METRICS or len(predictions.target) < 2:
        return None
    try:
        low, high = row_interval(predictions, metric)
    except ValueError:
        return None
    return {"metric": metric, "low": round(low, 6), "high": round(high, 6), "method": ROW_INTERVAL_METHOD}


def interval_text(interval: dict[str, Any] | None, test: dict[str, Any] | None) -> str | None:
    if not interval or not test:
        return None
    value = test["metrics"].get(interval["metric"])
    shown = f"{value:.4f} " if value is not None else ""
    return (
        f"Test {interval['metric']} {shown}(95% interval {interval['low']:.4f} to {interval['high']:.4f}, "
        f"{interval['method'].removeprefix('95% ')}, {test.get('examples') or 0:,} rows)."
    )


def baseline_comparison(run: Any, baseline: Any, baseline_dir: Path) -> dict[str, Any]:
    """The adapter's test metric minus the baseline run's, by the paired bootstrap over their common test
    rows. The baseline must be a run of the same backbone, dataset and data files, scored on the same rows;
    anything else is a HubError naming what differs."""
    from zoo.experiment.predictions import read_predictions
    from zoo.results.stats import METRICS, TEST_METHOD, paired_bootstrap

    record, other = run.record, baseline.record
    metric = record.task.main_metric
    differs = [
        what
        for what, mine, theirs in (
            ("backbone", run.config.backbone.name, baseline.config.backbone.name),
            ("backbone weights", record.backbone.fingerprint, other.backbone.fingerprint),
            ("dataset", record.data.name, other.data.name),
            ("training rows", _split(record, "train"), _split(other, "train")),
            ("test rows", _split(record, "test"), _split(other, "test")),
        )
        if mine != theirs
    ]
    if differs:
        raise HubError(f"baseline {baseline_dir}: another {', '.join(differs)} than the adapter's run; not comparable")
    if metric not in METRICS:
        raise HubError(f"baseline {baseline_dir}: {metric} cannot be recomputed row by row; no paired comparison")
    mine, theirs = read_predictions(run.dir, "test"), read_predictions(baseline_dir, "test")
    if mine is None or theirs is None:
        raise HubError(f"baseline {baseline_dir}: both runs need predictions/test.npz (the test rows' outputs)")
    try:
        result = paired_bootstrap({0: mine}, {0: theirs}, metric)
    except ValueError as error:
        raise HubError(f"baseline {baseline_dir}: {error}") from None
    verdict = "not separated" if not result.mark else ("better" if result.difference > 0 else "worse")
    return {
        "method": baseline.config.method.name,
        "seed": baseline.config.train.seed,
        "metric": metric,
        "value": (baseline.results.get("test") or {}).get("metrics", {}).get(metric),
        "difference": round(result.difference, 6),
        "low": round(result.low, 6),
        "high": round(result.high, 6),
        "p_value": round(result.p_value, 4),
        "rows": result.rows,
        "test": TEST_METHOD.replace("seeds and rows", "rows (one seed each)"),
        "verdict": verdict,
    }


def _split(record: Any, role: str) -> tuple[Any, ...] | None:
    split = record.data.splits.get(role)
    return (split.file, split.sha256, split.rows_used, split.selection) if split else None


def comparison_text(compared: dict[str, Any] | None) -> str | None:
    if not compared:
        return None
    value = f", test {compared['metric']} {compared['value']:.4f}" if compared.get("value") is not None else ""
    interval = (
        f"95% interval {compared['low']:+.4f} to {compared['high']:+.4f}, p = {compared['p_value']:.3g}; "
        f"{compared['test']}"
    )
    said = {
        "not separated": "the interval contains 0: not separated from it",
        "better": "above it",
        "worse": f"falls short of it by {-compared['difference']:.4f}",
    }[compared["verdict"]]
    return (
        f"Against `{compared['method']}` fine-tuning of the same backbone on the same data (seed {compared['seed']}"
        f"{value}): a difference of {compared['difference']:+.4f} ({interval}), {said}."
    )
