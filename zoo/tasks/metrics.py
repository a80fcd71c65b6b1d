"""The metrics each field reports, computed with scikit-learn, SciPy and rouge-score.

All functions take array-likes (numpy or torch, moved to CPU) and return plain floats.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def _np(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    return np.asarray(values)


def accuracy(labels, predictions) -> float:
    return float(accuracy_score(_np(labels), _np(predictions)))


def macro_f1(labels, predictions) -> float:
    return float(f1_score(_np(labels), _np(predictions), average="macro"))


def auroc(labels, scores) -> float:
    """Binary: ``scores`` is (N,) or (N, 2) (positive class is column 1). Multiclass: (N, C)
    probabilities, one-vs-rest macro average, as MedMNIST reports."""
    labels, scores = _np(labels), _np(scores)
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]
    if scores.ndim == 1:
        return float(roc_auc_score(labels, scores))
    return float(roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=list(range(scores.shape[1]))))


# Metrics where a smaller value is better; every other metric is better when greater. Domains add
# their own (retrieval's median rank) with register_lower_is_better.
_LOWER_IS_BETTER = {"loss", "mse", "mae", "rmse"}


def register_lower_is_better(*names: str) -> None:
    """Declare metrics whose best value is the smallest (used for early stopping and best checkpoints)."""
    _LOWER_IS_BETTER.update(names)


def greater_is_better(metric: str) -> bool:
    return metric not in _LOWER_IS_BETTER


def spearman(targets, predictions) -> float:
    return float(spearmanr(_np(targets), _np(predictions)).statistic)


def q3_accuracy(labels, predictions, ignore_index: int = -100) -> float:
    """Per-residue accuracy over the 3 secondary-structure states, skipping padding."""
    labels, predictions = _np(labels).reshape(-1), _np(predictions).reshape(-1)
    keep = labels != ignore_index
    return float((labels[keep] == predictions[keep]).mean())


def retrieval_metrics(similarity, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Text-to-video retrieval from a (queries, items) similarity matrix whose diagonal
    holds the true pairs: recall at k (in %) and the median rank (1 is best)."""
    similarity = _np(similarity)
    true = np.diag(similarity)[:, None]
    # rank = 1 + number of items scored strictly higher than the true one
    ranks = 1 + (similarity > true).sum(axis=1)
    results = {f"R@{k}": float(100.0 * (ranks <= k).mean()) for k in ks}
    results["median_rank"] = float(np.median(ranks))
    return results


def rouge_l(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (with stemming), as in the FLAN-T5 PEFT studies."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]
    return float(np.mean(scores)) if scores else 0.0
