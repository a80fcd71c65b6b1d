"""A loss that turns NaN or infinite stops training at once, named by its step, before anything is
logged, evaluated or checkpointed with it."""

from __future__ import annotations

import pytest
import torch

from tests.train.helpers import PointsDataset, PointsTask, TinyClassifier
from zoo.train import Trainer, TrainSettings
from zoo.train.checkpoint import CHECKPOINT_DIR, LAST_NAME, load
from zoo.train.divergence import TrainingDiverged
from zoo.train.reporting import read_metrics


class TurnsNaN(PointsTask):
    """A loss that is finite for the first ``good`` optimizer steps (one micro-batch each) and NaN after."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good, self.calls = good, 0

    def loss(self, model, batch, labels):
        self.calls += 1
        loss = super().loss(model, batch, labels)
        return loss if self.calls <= self.good else loss * float("nan")


class MetricRefusesNaN(PointsTask):
    """Evaluation that fails on non-finite scores, as scikit-learn's metrics do ("Input contains NaN.")."""

    def evaluate(self, model, dataset, batch_size):
        logits = model(self.collate([dataset[i] for i in range(len(dataset))])[0])
        if not torch.isfinite(logits).all():
            raise ValueError("Input contains NaN.")
        return super().evaluate(model, dataset, batch_size)


def test_a_nan_loss_stops_the_run_at_its_step_and_leaves_the_last_good_checkpoint(tmp_path):
    # Logged every 10 steps but checkpointed every step: the NaN of step 4 must not reach checkpoint 4.
    settings = TrainSettings(max_steps=20, batch_size=8, log_every=10, checkpoint_every=1, device="cpu")
    trainer = Trainer(TinyClassifier(), TurnsNaN(good=3), PointsDataset(64), None, settings, tmp_path)
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 4 \(loss nan\): lower train.lr") as caught:
        trainer.fit()
    assert caught.value.step == 4 and isinstance(caught.value, FloatingPointError)
    last = load(tmp_path / CHECKPOINT_DIR / LAST_NAME)
    assert last["progress"]["step"] == 3
    assert all(torch.isfinite(tensor).all() for tensor in last["trainable"].values())
    assert all(record["step"] <= 3 for record in read_metrics(tmp_path))  # no NaN record was written


def test_an_infinite_loss_is_named_as_such(tmp_path):
    class TurnsInfinite(PointsTask):
        def loss(self, model, batch, labels):
            return super().loss(model, batch, labels) + float("inf")

    settings = TrainSettings(max_steps=5, batch_size=8, device="cpu")
    with pytest.raises(TrainingDiverged, match=r"at step 1 \(loss inf\)"):
        Trainer(TinyClassifier(), TurnsInfinite(), PointsDataset(16), None, settings, tmp_path).fit()


def test_weights_that_overflow_right_after_a_step_are_divergence_not_a_metric_error(tmp_path):
    # One step at a huge learning rate, then validation: the training loss of step 1 was finite, but the
    # model now gives NaN scores and the metric fails on them. That is the divergence, and says so.
    settings = TrainSettings(lr=1e30, max_steps=1, batch_size=8, warmup_ratio=0.0, device="cpu")
    trainer = Trainer(
        TinyClassifier(), MetricRefusesNaN(), PointsDataset(16), PointsDataset(8, seed=1), settings, tmp_path
    )
    with pytest.raises(
        TrainingDiverged, match=r"training diverged at step 1 \(loss nan\): lower train.lr \(it is 1e\+30\)"
    ):
        trainer.fit()


def test_a_metric_error_on_a_healthy_model_is_not_called_divergence(tmp_path):
    class Broken(PointsTask):
        def evaluate(self, model, dataset, batch_size):
            raise ValueError("labels do not fit")

    settings = TrainSettings(max_steps=1, batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="labels do not fit"):
        Trainer(TinyClassifier(), Broken(), PointsDataset(16), PointsDataset(8), settings, tmp_path).fit()


def test_bf16_divergence_also_suggests_fp32(tmp_path):
    settings = TrainSettings(max_steps=3, batch_size=8, precision="bf16", device="cpu")
    with pytest.raises(TrainingDiverged, match=r"lower train.lr \(it is 0.001\), or train with train.precision=fp32"):
        Trainer(TinyClassifier(), TurnsNaN(good=1), PointsDataset(32), None, settings, tmp_path).fit()
