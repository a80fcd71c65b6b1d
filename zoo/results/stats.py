"""The statistics of a result table: a t-interval over seeds, and a paired bootstrap against the baseline.

**Interval of a cell**: the mean over its seeds ± the half-width of the 95% Student t-interval,
``t(0.975, n - 1) * s / sqrt(n)`` with ``s`` the sample standard deviation (scipy.stats.t). It
describes how the number moves with the seed; a cell with one seed has none.

**Paired test against the baseline** (full fine-tuning) in the same domain and training-set size:
a two-level paired bootstrap over seeds and test rows, from each run's per-example outputs
(``predictions/test.npz``, :mod:`zoo.experiment.predictions`; where a table reports validation at
the best step for want of a test split, the validation rows of ``predictions/val.npz``). Seed ``s`` of the method is paired
with seed ``s`` of the baseline. Each of :data:`RESAMPLES` resamples draws the seed pairs with
replacement and the test rows with replacement, the same rows for both methods (and for every seed
where all runs scored the same rows), recomputes the metric of each run on those rows, and takes
the mean over the drawn pairs of (method - baseline). Recomputed, not averaged: AUROC and Spearman
are not means over rows. The 95% interval of the difference is the 2.5th and 97.5th percentiles
of the resampled differences; the two-sided p-value is ``2 * min(P(d <= 0), P(d >= 0))`` with
``(1 + count) / (1 + resamples)``. A cell is better (▲) or worse (▼) than the baseline only where the
interval excludes 0. The generator is seeded (:data:`BOOTSTRAP_SEED`), so a table renders the same
marks every time. With one seed the test covers the test rows only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from zoo.experiment.predictions import Predictions

CONFIDENCE = 0.95
RESAMPLES = 1000
BOOTSTRAP_SEED = 0
INTERVAL_METHOD = "95% t-interval over seeds (Student t, n-1 df)"
TEST_METHOD = f"paired bootstrap over seeds and rows, {RESAMPLES:,} resamples, 95% percentile interval"
BETTER, WORSE = "▲", "▼"
_CHUNK = 200  # resamples scored at once: bounds the (resamples, rows) arrays of a large test split


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None]:
    """``(mean, half-width)`` of the Student t-interval over ``values``; half-width None for one value."""
    if not values:
        raise ValueError("a t-interval needs at least one value")
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, None
    spread = float(data.std(ddof=1)) / math.sqrt(len(data))
    return mean, float(scipy_stats.t.ppf(0.5 + confidence / 2, len(data) - 1)) * spread


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


def _binary_auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Row-wise AUROC as the Mann-Whitney statistic on average ranks (ties count one half, as sklearn)."""
    ranks = scipy_stats.rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _classes(p: Predictions) -> np.ndarray:
    if p.kind != "classification":
        raise ValueError("this metric needs classification predictions")
    return p.output.argmax(axis=1)


def _accuracy(p: Predictions, rows: np.ndarray) -> np.ndarray:
    return (_classes(p) == p.target)[rows].mean(axis=1)


def _auroc(p: Predictions, rows: np.ndarray) -> np.ndarray:
    _classes(p)
    target = p.target[rows]
    if p.output.shape[1] == 2:
        return _binary_auroc(p.output[:, 1][rows], target == 1)
    per_class = [_binary_auroc(p.output[:, c][rows], target == c) for c in range(p.output.shape[1])]
    return np.mean(per_class, axis=0)  # one-vs-rest, unweighted over classes, as the task's auroc


def _macro_f1(p: Predictions, rows: np.ndarray) -> np.ndarray:
    from sklearn.metrics import f1_score

    classes, target = _classes(p), p.target
    return np.array([f1_score(target[r], classes[r], average="macro") for r in rows])


def _regression(p: Predictions) -> np.ndarray:
    if p.kind != "regression":
        raise ValueError("this metric needs regression predictions")
    return p.output.reshape(len(p.target))


def _spearman(p: Predictions, rows: np.ndarray) -> np.ndarray:
    output = _regression(p)
    return _rowwise_pearson(scipy_stats.rankdata(p.target[rows], axis=1), scipy_stats.rankdata(output[rows], axis=1))


def _mse(p: Predictions, rows: np.ndarray) -> np.ndarray:
    return ((_regression(p) - p.target) ** 2)[rows].mean(axis=1)


METRICS: dict[str, Callable[[Predictions, np.ndarray], np.ndarray]] = {
    "accuracy": _accuracy,
    "auroc": _auroc,
    "macro_f1": _macro_f1,
    "spearman": _spearman,
    "mse": _mse,
}
"""Metric name -> ``f(predictions, rows)``: the metric on each row of ``rows`` (resamples, n) of row indices."""


def metric_on_rows(metric: str, predictions: Predictions, rows: np.ndarray) -> np.ndarray:
    """``metric`` recomputed on each resample of test rows (a (resamples, n) array of indices), in chunks."""
    if metric not in METRICS:
        raise KeyError(f"no per-example recomputation of {metric!r}; known: {', '.join(METRICS)}")
    rows = np.atleast_2d(rows)
    score = METRICS[metric]
    return np.concatenate([score(predictions, rows[i : i + _CHUNK]) for i in range(0, len(rows), _CHUNK)])


ROW_INTERVAL_METHOD = f"95% percentile bootstrap over the test rows, {RESAMPLES:,} resamples"


def row_interval(
    predictions: Predictions, metric: str, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of one run's ``metric`` over its rows (what a single
    adapter's card states: how much the number would move on another draw of as many test rows)."""
    n = len(predictions.target)
    if n < 2:
        raise ValueError(f"a bootstrap over rows needs at least two rows; the predictions have {n}")
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = metric_on_rows(metric, predictions, rows)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise ValueError(f"{metric} is undefined on every resample of the rows")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedResult:
    """The method minus the baseline: observed, its 95% interval, the p-value, and the mark."""

    difference: float
    low: float
    high: float
    p_value: float
    mark: str
    """``BETTER``, ``WORSE`` or ``""`` (the interval contains 0)."""
    seeds: int
    rows: int


def _same_rows(a: Predictions, b: Predictions) -> bool:
    return np.array_equal(a.index, b.index) and np.array_equal(a.target, b.target)


def paired_bootstrap(
    method: dict[int, Predictions],
    baseline: dict[int, Predictions],
    metric: str,
    greater_is_better: bool = True,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedResult:
    """The paired bootstrap of the module docstring over the seeds both sides have (seed -> predictions)."""
    if metric not in METRICS:
        raise KeyError(f"no per-example recomputation of {metric!r}; known: {', '.join(METRICS)}")
    common = sorted(set(method) & set(baseline))
    if not common:
        raise ValueError("no seed that both the method and the baseline have predictions for")
    for s in common:
        if not _same_rows(method[s], baseline[s]):
            raise ValueError(f"seed {s}: the method and the baseline were scored on different test rows")
    rng = np.random.default_rng(seed)
    firsts = [baseline[s] for s in common]
    shared = all(_same_rows(firsts[0], other) for other in firsts[1:])
    shared_rows = rng.integers(0, len(firsts[0].target), size=(resamples, len(firsts[0].target))) if shared else None
    observed, resampled = [], []
    for s in common:
        n = len(method[s].target)
        full = np.arange(n)[None, :]
        observed.append(
            float(metric_on_rows(metric, method[s], full)[0] - metric_on_rows(metric, baseline[s], full)[0])
        )
        rows = shared_rows if shared_rows is not None else rng.integers(0, n, size=(resamples, n))
        resampled.append(metric_on_rows(metric, method[s], rows) - metric_on_rows(metric, baseline[s], rows))
    by_seed = np.stack(resampled)  # (seeds, resamples)
    drawn = rng.integers(0, len(common), size=(resamples, len(common)))  # seed pairs, with replacement
    differences = by_seed[drawn, np.arange(resamples)[:, None]].mean(axis=1)
    differences = differences[np.isfinite(differences)]  # e.g. AUROC of a resample with one class only
    if len(differences) == 0:
        raise ValueError(f"{metric} is undefined on every resample of the test rows")
    low, high = (float(v) for v in np.percentile(differences, [2.5, 97.5]))
    count = len(differences)
    p_value = min(
        1.0, 2 * min((1 + (differences <= 0).sum()) / (1 + count), (1 + (differences >= 0).sum()) / (1 + count))
    )
    above, below = low > 0, high < 0
    mark = ""
    if above or below:
        mark = BETTER if above == greater_is_better else WORSE
    return PairedResult(float(np.mean(observed)), low, high, float(p_value), mark, len(common), len(firsts[0].target))
