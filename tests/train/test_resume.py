"""A killed run, resumed, ends exactly where an uninterrupted one does; checkpoints survive kills."""

import pytest
import torch

from tests.train.helpers import PointsDataset, PointsTask, TinyClassifier, trainable_state
from zoo.train import Trainer, TrainSettings
from zoo.train import checkpoint as ckpt
from zoo.train.reporting import read_metrics


class Killed(Exception):
    pass


def kill_at(step):
    def callback(trainer, current):
        if current == step:
            raise Killed

    return callback


SETTINGS = dict(
    lr=1e-2, epochs=3, batch_size=16, grad_accum=2, log_every=2, checkpoint_every=3, eval_every=4, device="cpu"
)


def make_trainer(run_dir, callbacks=(), **overrides):
    model = TinyClassifier(dropout=0.3)  # dropout: the RNG state must be restored too
    settings = TrainSettings(**{**SETTINGS, **overrides})
    # 100 examples / 16 = 7 micro-batches: 4 steps per epoch, the last one short
    trainer = Trainer(
        model, PointsTask(), PointsDataset(100), PointsDataset(40, seed=1), settings, run_dir, callbacks=callbacks
    )
    return trainer, model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    trainer, model = make_trainer(run_dir)
    return trainer.fit(), trainable_state(model), read_metrics(run_dir)


@pytest.mark.parametrize("kills", [[7], [2, 9], [12]], ids=["mid-epoch", "twice", "after-the-end"])
def test_resume_is_bit_exact(tmp_path, uninterrupted, kills):
    expected_result, expected_state, expected_records = uninterrupted
    for step in kills:
        trainer, _ = make_trainer(tmp_path, callbacks=[kill_at(step)])
        with pytest.raises(Killed):
            trainer.fit(resume=step != kills[0])
    trainer, model = make_trainer(tmp_path)
    result = trainer.fit(resume=True)
    for name, value in trainable_state(model).items():
        assert torch.equal(value, expected_state[name]), name
    assert result.steps == expected_result.steps == 12
    assert result.history == expected_result.history
    assert (result.best_metric, result.best_step) == (expected_result.best_metric, expected_result.best_step)

    # the metrics log has each step once, with the same values as the uninterrupted run
    def strip(records):
        return [{k: v for k, v in r.items() if k not in ("time", "examples_per_second")} for r in records]

    assert strip(read_metrics(tmp_path)) == strip(expected_records)


def test_resume_without_checkpoint_starts_fresh(tmp_path, uninterrupted):
    trainer, model = make_trainer(tmp_path)
    trainer.fit(resume=True)
    assert all(torch.equal(v, uninterrupted[1][k]) for k, v in trainable_state(model).items())


def test_a_fresh_fit_ignores_an_older_runs_checkpoints(tmp_path, uninterrupted):
    trainer, _ = make_trainer(tmp_path, callbacks=[kill_at(5)])
    with pytest.raises(Killed):
        trainer.fit()
    trainer, model = make_trainer(tmp_path)
    trainer.fit(resume=False)
    assert all(torch.equal(v, uninterrupted[1][k]) for k, v in trainable_state(model).items())


def test_resume_refuses_changed_settings(tmp_path):
    trainer, _ = make_trainer(tmp_path, callbacks=[kill_at(3)])
    with pytest.raises(Killed):
        trainer.fit()
    trainer, _ = make_trainer(tmp_path, lr=5e-3, log_every=1)  # log_every may change, lr may not
    with pytest.raises(ckpt.CheckpointError, match=r"lr: 0.01 -> 0.005"):
        trainer.fit(resume=True)


def test_kill_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer, _ = make_trainer(tmp_path, callbacks=[kill_at(3)])
    with pytest.raises(Killed):
        trainer.fit()
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()

    real_save = torch.save

    def dying_save(payload, handle, *args, **kwargs):
        real_save(payload, handle, *args, **kwargs)
        handle.truncate(100)  # half a file on disk, then the process dies
        raise Killed

    trainer, _ = make_trainer(tmp_path)
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        trainer.fit(resume=True)
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]
    assert ckpt.load(last)["progress"]["step"] == 3


def test_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    trainer, _ = make_trainer(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=str(path)):
        trainer.fit(resume=True)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path):
    # Flipped bytes in the middle: the zip structure may survive and torch.load succeed with wrong tensors.
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = bytes(b ^ 0xFF for b in data[middle : middle + 256])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncate, _garble], ids=["truncated", "garbled"])
def test_corrupt_last_checkpoint_resumes_from_the_previous_one(tmp_path, uninterrupted, corrupt, caplog):
    trainer, _ = make_trainer(tmp_path, callbacks=[kill_at(7)])
    with pytest.raises(Killed):
        trainer.fit()
    folder = tmp_path / "checkpoints"
    last, previous = folder / ckpt.LAST_NAME, folder / ckpt.PREVIOUS_NAME
    # checkpoints at steps 3, 4 (end of epoch) and 6: the one before the newest is kept
    assert ckpt.load(last)["progress"]["step"] == 6 and ckpt.load(previous)["progress"]["step"] == 4
    corrupt(last)
    with pytest.raises(ckpt.CheckpointError, match=str(last)):
        ckpt.load(last)

    trainer, model = make_trainer(tmp_path)
    with caplog.at_level("INFO", logger="zoo.train"):
        result = trainer.fit(resume=True)
    said = caplog.text
    assert f"{last} cannot be read" in said and f"resuming {tmp_path} at step 4 of 12 from {previous}" in said
    assert result.steps == 12
    for name, value in trainable_state(model).items():  # step 4 onwards again: still the uninterrupted weights
        assert torch.equal(value, uninterrupted[1][name]), name


def test_no_readable_checkpoint_names_the_files_and_the_fix(tmp_path):
    trainer, _ = make_trainer(tmp_path, callbacks=[kill_at(7)])
    with pytest.raises(Killed):
        trainer.fit()
    folder = tmp_path / "checkpoints"
    _truncate(folder / ckpt.LAST_NAME)
    _garble(folder / ckpt.PREVIOUS_NAME)
    trainer, _ = make_trainer(tmp_path)
    with pytest.raises(ckpt.CheckpointError) as caught:
        trainer.fit(resume=True)
    message = str(caught.value)
    assert str(folder / ckpt.LAST_NAME) in message and str(folder / ckpt.PREVIOUS_NAME) in message
    assert "without --resume" in message
