"""The table's statistics against independent references: the t-interval by hand, metrics recomputed on
resamples against scikit-learn and SciPy, and the paired bootstrap on synthetic predictions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from zoo.experiment.predictions import Predictions, read_predictions, write_predictions
from zoo.results.stats import BETTER, WORSE, metric_on_rows, paired_bootstrap, t_interval


def test_t_interval_matches_a_hand_computation():
    # 1, 2, 3, 4: mean 2.5; sample std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = 1.290994;
    # t(0.975, 3 df) = 3.182446 (t table); half-width 3.182446 * 1.290994 / sqrt(4) = 2.054260
    mean, half = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(2.054260, abs=1e-6)
    # three seeds as a table has them: 0.80, 0.90, 0.70 -> t(0.975, 2 df) = 4.302653 * 0.1 / sqrt(3)
    assert t_interval([0.8, 0.9, 0.7])[1] == pytest.approx(0.248414, abs=1e-6)
    assert t_interval([0.5]) == (0.5, None)
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])


def classification(target: np.ndarray, correct: np.ndarray, rng: np.random.Generator, classes: int = 2) -> Predictions:
    """Probabilities whose argmax is the target where ``correct``, another class elsewhere."""
    n = len(target)
    logits = rng.normal(size=(n, classes))
    predicted = np.where(correct, target, (target + 1 + rng.integers(0, classes - 1, n)) % classes)
    logits[np.arange(n), predicted] += 20.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions("classification", np.arange(n), target, probabilities)


def regression(target: np.ndarray, noise: float, rng: np.random.Generator) -> Predictions:
    return Predictions("regression", np.arange(len(target)), target, target + rng.normal(scale=noise, size=len(target)))


@pytest.mark.parametrize("classes", [2, 4])
def test_metrics_on_the_identity_resample_equal_sklearn_and_scipy(classes):
    rng = np.random.default_rng(1)
    target = rng.integers(0, classes, 300)
    p = classification(target, rng.random(300) < 0.7, rng, classes)
    identity = np.arange(300)[None, :]
    predicted = p.output.argmax(axis=1)
    assert metric_on_rows("accuracy", p, identity)[0] == pytest.approx(accuracy_score(target, predicted), abs=1e-12)
    assert metric_on_rows("macro_f1", p, identity)[0] == pytest.approx(f1_score(target, predicted, average="macro"))
    expected = (
        roc_auc_score(target, p.output[:, 1])
        if classes == 2
        else roc_auc_score(target, p.output, multi_class="ovr", average="macro", labels=list(range(classes)))
    )
    assert metric_on_rows("auroc", p, identity)[0] == pytest.approx(expected, abs=1e-12)
    # and on a real resample (repeated rows) against the same references on the resampled arrays
    rows = rng.integers(0, 300, size=(3, 300))
    for r, value in zip(rows, metric_on_rows("auroc", p, rows)):
        reference = (
            roc_auc_score(target[r], p.output[r, 1])
            if classes == 2
            else roc_auc_score(target[r], p.output[r], multi_class="ovr", average="macro", labels=list(range(classes)))
        )
        assert value == pytest.approx(reference, abs=1e-12)


def test_spearman_and_mse_on_resamples_equal_scipy_with_ties():
    rng = np.random.default_rng(2)
    target = np.round(rng.normal(size=250), 1)  # ties, which spearmanr ranks by their average
    p = regression(target, 0.5, rng)
    p.output = np.round(p.output, 1)
    rows = np.vstack([np.arange(250), rng.integers(0, 250, 250)])
    for r, value in zip(rows, metric_on_rows("spearman", p, rows)):
        assert value == pytest.approx(spearmanr(target[r], p.output[r]).statistic, abs=1e-12)
    assert metric_on_rows("mse", p, rows[:1])[0] == pytest.approx(np.mean((p.output - target) ** 2), abs=1e-12)


def test_a_clearly_better_method_is_marked_and_a_worse_one_too():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 2, 400)
    good = {s: classification(target, rng.random(400) < 0.85, rng) for s in range(3)}
    weak = {s: classification(target, rng.random(400) < 0.60, rng) for s in range(3)}
    better = paired_bootstrap(good, weak, "accuracy")
    assert better.mark == BETTER and better.low > 0 and better.p_value < 0.01 and better.seeds == 3
    assert better.difference == pytest.approx(
        np.mean([metric_on_rows("accuracy", good[s], np.arange(400)[None])[0] for s in range(3)])
        - np.mean([metric_on_rows("accuracy", weak[s], np.arange(400)[None])[0] for s in range(3)])
    )
    assert paired_bootstrap(weak, good, "accuracy").mark == WORSE
    assert paired_bootstrap(good, weak, "auroc").mark == BETTER  # recomputed per resample, not a mean of rows


def test_equal_methods_plus_noise_are_not_marked():
    rng = np.random.default_rng(4)
    target = rng.integers(0, 2, 400)
    base, same = {}, {}
    for s in range(3):
        correct = rng.random(400) < 0.75
        flipped = correct.copy()
        right, wrong = np.flatnonzero(correct)[:15], np.flatnonzero(~correct)[:15]
        flipped[right], flipped[wrong] = False, True  # 15 rows lost, 15 gained: the same accuracy
        base[s], same[s] = classification(target, correct, rng), classification(target, flipped, rng)
    result = paired_bootstrap(same, base, "accuracy")
    assert result.difference == 0.0 and result.low < 0 < result.high and result.mark == "" and result.p_value > 0.5


def test_regression_lower_is_better_and_paired_rows_are_checked():
    rng = np.random.default_rng(5)
    target = rng.normal(size=300)
    close = {s: regression(target, 0.3, rng) for s in range(3)}
    far = {s: regression(target, 1.5, rng) for s in range(3)}
    assert paired_bootstrap(close, far, "spearman").mark == BETTER
    assert paired_bootstrap(close, far, "mse", greater_is_better=False).mark == BETTER  # a smaller error
    assert paired_bootstrap(far, close, "mse", greater_is_better=False).mark == WORSE
    other = {0: regression(rng.normal(size=300), 0.3, rng)}
    with pytest.raises(ValueError, match="different test rows"):
        paired_bootstrap(other, far, "spearman")
    with pytest.raises(KeyError, match="R@1"):
        paired_bootstrap(close, far, "R@1")


def test_the_bootstrap_is_seeded():
    rng = np.random.default_rng(6)
    target = rng.integers(0, 2, 200)
    a = {0: classification(target, rng.random(200) < 0.7, rng)}
    b = {0: classification(target, rng.random(200) < 0.65, rng)}
    assert paired_bootstrap(a, b, "accuracy") == paired_bootstrap(a, b, "accuracy")


def test_predictions_file_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    p = classification(rng.integers(0, 3, 20), rng.random(20) < 0.5, rng, 3)
    write_predictions(tmp_path, "test", p)
    back = read_predictions(tmp_path, "test")
    assert back is not None and back.kind == "classification"
    assert np.array_equal(back.index, p.index) and np.array_equal(back.target, p.target)
    assert np.allclose(back.output, p.output, atol=1e-7)
    assert read_predictions(tmp_path, "val") is None
    with pytest.raises(ValueError, match="one index, target and output per row"):
        Predictions("classification", np.arange(3), np.arange(2), np.zeros((3, 2)))


def test_the_row_interval_of_one_run_matches_scipy_bootstrap_and_the_binomial_interval():
    """One adapter's interval over its test rows: the percentile bootstrap of scipy.stats.bootstrap
    (an independent implementation, its own draws) and, for accuracy, the normal binomial interval."""
    from scipy.stats import bootstrap

    from zoo.results.stats import row_interval

    rng = np.random.default_rng(3)
    n = 2000
    target = rng.integers(0, 2, n)
    correct = rng.random(n) < 0.8
    predicted = np.where(correct, target, 1 - target)
    output = np.stack([1.0 - predicted, predicted.astype(float)], axis=1) * 0.8 + 0.1
    predictions = Predictions("classification", np.arange(n), target, output)
    low, high = row_interval(predictions, "accuracy")
    accuracy = correct.mean()
    reference = bootstrap((correct.astype(float),), np.mean, method="percentile", n_resamples=4000, random_state=0)
    assert low == pytest.approx(reference.confidence_interval.low, abs=0.004)
    assert high == pytest.approx(reference.confidence_interval.high, abs=0.004)
    half = 1.96 * np.sqrt(accuracy * (1 - accuracy) / n)
    assert low == pytest.approx(accuracy - half, abs=0.004) and high == pytest.approx(accuracy + half, abs=0.004)
    with pytest.raises(ValueError, match="at least two rows"):
        row_interval(Predictions("classification", np.arange(1), target[:1], output[:1]), "accuracy")
