"""The training loop against a hand-written reference loop, and what a run leaves in its folder."""

import io
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.train.helpers import PointsDataset, PointsTask, TinyClassifier, trainable_state
from zoo.errors import ConfigError
from zoo.train import Trainer, TrainSettings
from zoo.train.reporting import read_metrics


def reference_training(dataset, lr, epochs, batch_size, warmup_ratio, weight_decay, max_grad_norm, seed, sgd=False):
    """AdamW (or SGD with momentum 0.9) + linear warmup + cosine decay + clipping, written out by hand (no
    zoo.train code)."""
    model = TinyClassifier()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9) if sgd else torch.optim.AdamW(groups, lr=lr)
    per_epoch = math.ceil(len(dataset) / batch_size)
    total = epochs * per_epoch
    warmup = math.ceil(total * warmup_ratio)
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, len(dataset), batch_size):
            factor = (
                (step + 1) / warmup
                if step < warmup
                else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            )
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            items = [dataset[i] for i in order[start : start + batch_size]]
            inputs, labels = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
            F.cross_entropy(model({"x": inputs}), labels).backward()
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
    return model


def test_updates_equal_a_hand_written_loop(tmp_path):
    dataset = PointsDataset(40)
    reference = reference_training(dataset, 1e-2, 2, 8, 0.25, 0.05, 0.5, seed=3)
    model = TinyClassifier()
    settings = TrainSettings(
        lr=1e-2, epochs=2, batch_size=8, warmup_ratio=0.25, weight_decay=0.05, max_grad_norm=0.5, seed=3, device="cpu"
    )
    result = Trainer(model, PointsTask(), dataset, None, settings, tmp_path).fit()
    assert result.steps == 10 and result.best_metric is None
    expected = trainable_state(reference)
    for name, value in trainable_state(model).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-7, msg=name)


def test_sgd_updates_equal_a_hand_written_loop(tmp_path):
    dataset = PointsDataset(40)
    reference = reference_training(dataset, 0.2, 2, 8, 0.25, 0.05, 0.5, seed=3, sgd=True)
    model = TinyClassifier()
    settings = TrainSettings(
        lr=0.2,
        epochs=2,
        batch_size=8,
        warmup_ratio=0.25,
        weight_decay=0.05,
        max_grad_norm=0.5,
        seed=3,
        device="cpu",
        optimizer="sgd",
    )
    Trainer(model, PointsTask(), dataset, None, settings, tmp_path).fit()
    expected = trainable_state(reference)
    for name, value in trainable_state(model).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-7, msg=name)
    with pytest.raises(ConfigError, match="train.optimizer='adam': choose adamw"):
        TrainSettings(optimizer="adam")


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    dataset = PointsDataset(48)
    reference = reference_training(dataset, 1e-2, 1, 16, 0.0, 0.0, 1e9, seed=0)
    model = TinyClassifier()
    settings = TrainSettings(
        lr=1e-2,
        epochs=1,
        batch_size=8,
        grad_accum=2,
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=None,
        device="cpu",
    )
    assert Trainer(model, PointsTask(), dataset, None, settings, tmp_path).fit().steps == 3
    expected = trainable_state(reference)
    for name, value in trainable_state(model).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_run_trains_and_leaves_logs_events_and_best_checkpoint(tmp_path):
    model = TinyClassifier()
    frozen = model.body[0].weight.detach().clone()
    settings = TrainSettings(lr=2e-2, epochs=4, batch_size=16, log_every=2, device="cpu", load_best_at_end=False)
    trainer = Trainer(model, PointsTask(), PointsDataset(96), PointsDataset(64, seed=1), settings, tmp_path)
    before = trainer.evaluate(trainer.val_set)
    result = trainer.fit()

    assert torch.equal(model.body[0].weight, frozen)  # frozen stays frozen
    assert result.steps == 4 * 6 and result.epochs == 4.0 and not result.stopped_early
    assert result.best_metric > before["accuracy"] and result.best_metric > 0.6
    assert [record["step"] for record in result.history] == [6, 12, 18, 24]  # once per epoch
    assert result.best_metric == max(record["accuracy"] for record in result.history)
    assert result.history[[r["step"] for r in result.history].index(result.best_step)]["accuracy"] == result.best_metric

    records = read_metrics(tmp_path)
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(2, 25, 2))
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    val = [r for r in records if r["split"] == "val"]
    running_best = None
    for record in val:  # "best" marks a strict improvement
        assert record["best"] == (running_best is None or record["accuracy"] > running_best)
        running_best = record["accuracy"] if record["best"] else running_best
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    best = torch.load(result.best_checkpoint, weights_only=True)
    assert best["step"] == result.best_step and best["metrics"]["accuracy"] == result.best_metric
    assert set(best["trainable"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # no temporary file left behind


def test_best_weights_are_put_back_at_the_end(tmp_path):
    model = TinyClassifier()
    settings = TrainSettings(lr=5e-2, epochs=4, batch_size=16, device="cpu")
    trainer = Trainer(model, PointsTask(), PointsDataset(96), PointsDataset(64, seed=1), settings, tmp_path)
    result = trainer.fit()
    best = torch.load(result.best_checkpoint, weights_only=True)["trainable"]
    for name, value in trainable_state(model).items():
        assert torch.equal(value, best[name])
    assert trainer.evaluate(trainer.val_set)["accuracy"] == result.best_metric


class FlatTask(PointsTask):
    """Its metric never improves after the first evaluation."""

    def evaluate(self, model, dataset, batch_size):
        return {"accuracy": 0.5}


def test_early_stopping_after_patience_evaluations(tmp_path):
    settings = TrainSettings(epochs=50, batch_size=16, eval_every=2, early_stopping_patience=3, device="cpu")
    result = Trainer(TinyClassifier(), FlatTask(), PointsDataset(64), PointsDataset(8), settings, tmp_path).fit()
    assert result.stopped_early
    assert [r["step"] for r in result.history] == [2, 4, 6, 8]  # 1 best + 3 without improvement
    assert result.steps == 8 and result.best_step == 2


def test_lower_is_better_metrics_and_max_steps(tmp_path):
    task = PointsTask(main_metric="loss", greater_is_better=False)
    settings = TrainSettings(lr=2e-2, max_steps=9, batch_size=16, eval_every=4, device="cpu", load_best_at_end=False)
    result = Trainer(TinyClassifier(), task, PointsDataset(64), PointsDataset(32, seed=1), settings, tmp_path).fit()
    assert result.steps == 9 and result.epochs == pytest.approx(9 / 4)
    assert [r["step"] for r in result.history] == [4, 8, 9]  # the last step is always evaluated
    assert result.best_metric == min(r["loss"] for r in result.history)


def test_bf16_autocast_on_cpu(tmp_path):
    seen = []

    class Recording(PointsTask):
        def loss(self, model, batch, labels):
            logits = model(batch)
            seen.append(logits.dtype)
            return F.cross_entropy(logits.float(), labels)

    model = TinyClassifier()
    before = trainable_state(model)
    settings = TrainSettings(max_steps=3, batch_size=16, precision="bf16", device="cpu")
    result = Trainer(model, Recording(), PointsDataset(64), None, settings, tmp_path).fit()
    assert seen == [torch.bfloat16] * 3
    assert math.isfinite(result.train_loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert not torch.equal(before["head.weight"], model.head.weight)


def test_errors_are_clear(tmp_path):
    model = TinyClassifier()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        Trainer(model, PointsTask(), PointsDataset(8), None, TrainSettings(), tmp_path).fit()
    with pytest.raises(TypeError, match="lacks collate, loss"):
        Trainer(TinyClassifier(), object(), PointsDataset(8), None, TrainSettings(), tmp_path)
    with pytest.raises(ConfigError, match="main metric 'accuracy'"):
        task = PointsTask()
        task.evaluate = lambda model, dataset, batch_size: {"f1": 1.0}
        Trainer(TinyClassifier(), task, PointsDataset(8), PointsDataset(8), TrainSettings(max_steps=1), tmp_path).fit()

    class Exploding(PointsTask):
        def loss(self, model, batch, labels):
            return model(batch).sum() * float("nan")

    with pytest.raises(FloatingPointError, match=r"training diverged at step 1 \(loss nan\): lower train.lr"):
        Trainer(TinyClassifier(), Exploding(), PointsDataset(8), None, TrainSettings(log_every=1), tmp_path).fit()


def test_metrics_file_is_json_lines(tmp_path):
    settings = TrainSettings(max_steps=2, batch_size=16, log_every=1, device="cpu")
    Trainer(TinyClassifier(), PointsTask(), PointsDataset(32), PointsDataset(8), settings, tmp_path).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["split"] for line in lines] == ["train", "train", "val"]


def test_progress_bar_on_a_terminal_plain_lines_elsewhere_nothing_when_switched_off(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    settings = TrainSettings(max_steps=4, batch_size=16, log_every=2, eval_every=2, device="cpu")
    shown = {}
    for where, stream, show in (
        ("terminal", Terminal(), True),
        ("log", io.StringIO(), True),
        ("off", Terminal(), False),
    ):
        monkeypatch.setattr(sys, "stderr", stream)
        trainer = Trainer(
            TinyClassifier(), PointsTask(), PointsDataset(64), PointsDataset(8), settings, tmp_path, show_progress=show
        )
        trainer.fit()
        monkeypatch.undo()
        shown[where] = stream.getvalue()
    # on a terminal: total, rate and ETA, the live loss, throughput and validation metric
    bar = shown["terminal"]
    assert "4/4" in bar and "loss=" in bar and "ex/s=" in bar and "val_accuracy=" in bar
    assert "step/s" in bar or "s/step" in bar
    # elsewhere: one plain line per logged step (log_every=2) and per validation, no bar
    lines = shown["log"].splitlines()
    logged = [line for line in lines if "examples/s" in line]
    assert [line.split(" (")[0] for line in logged] == ["step 2/4", "step 4/4"]
    assert all(" loss " in line and "left" in line for line in logged)
    assert [line.split(":")[0] for line in lines if "validation accuracy" in line] == ["step 2/4", "step 4/4"]
    assert "\r" not in shown["log"] and "loss=" not in shown["log"]
    assert shown["off"] == ""


def test_worker_processes_do_not_change_the_data_order(tmp_path):
    states = []
    for workers in (0, 2):
        model = TinyClassifier()
        settings = TrainSettings(epochs=2, batch_size=16, num_workers=workers, device="cpu")
        Trainer(model, PointsTask(), PointsDataset(48), None, settings, tmp_path / str(workers)).fit()
        states.append(trainable_state(model))
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def test_fit_runs_once_per_trainer(tmp_path):
    trainer = Trainer(TinyClassifier(), PointsTask(), PointsDataset(16), None, TrainSettings(max_steps=1), tmp_path)
    trainer.fit()
    with pytest.raises(RuntimeError, match="once per Trainer"):
        trainer.fit()
