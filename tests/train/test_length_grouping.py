"""Length-grouped batches (train.group_by_length) and padding each text batch to its longest item."""

from __future__ import annotations

import math

import pytest
import torch

from tests.train.helpers import PointsDataset, PointsTask, TinyClassifier, trainable_state
from zoo.catalog.backbones import create_backbone
from zoo.errors import ConfigError
from zoo.train import Trainer, TrainSettings
from zoo.train.sampler import ResumableDistributedSampler, length_grouped_order


def skewed_lengths(count: int, seed: int = 0) -> list[int]:
    """Mostly short, a long tail: as sentence lengths are."""
    generator = torch.Generator().manual_seed(seed)
    return [min(128, 2 + int(value)) for value in torch.empty(count).exponential_(1 / 15, generator=generator)]


def padding(order: list[int], lengths: list[int], batch_size: int) -> int:
    """Pad tokens when each batch of ``order`` is padded to its longest item."""
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        total += max(batch) * len(batch) - sum(batch)
    return total


def epoch(sampler: ResumableDistributedSampler, number: int) -> list[int]:
    sampler.set_epoch(number)
    return list(sampler)


def test_every_index_once_per_epoch_and_the_same_order_per_seed():
    lengths = skewed_lengths(1000)
    first = ResumableDistributedSampler(1000, 1, 0, seed=3, lengths=lengths, batch_size=16)
    again = ResumableDistributedSampler(1000, 1, 0, seed=3, lengths=lengths, batch_size=16)
    other_seed = ResumableDistributedSampler(1000, 1, 0, seed=4, lengths=lengths, batch_size=16)
    for number in range(3):
        order = epoch(first, number)
        assert sorted(order) == list(range(1000))
        assert order == epoch(again, number)
        assert order != epoch(other_seed, number)
    assert epoch(first, 0) != epoch(first, 1)  # a new order every epoch


def test_grouping_cuts_padding_against_random_batches():
    lengths, batch_size = skewed_lengths(4000), 32
    grouped = epoch(ResumableDistributedSampler(4000, 1, 0, seed=0, lengths=lengths, batch_size=batch_size), 0)
    shuffled = epoch(ResumableDistributedSampler(4000, 1, 0, seed=0), 0)
    real_tokens = sum(lengths)
    random_waste, grouped_waste = padding(shuffled, lengths, batch_size), padding(grouped, lengths, batch_size)
    assert random_waste > real_tokens  # random batches of this distribution are mostly padding
    assert grouped_waste < 0.05 * random_waste
    # the batches are not in length order: the long ones are spread over the epoch
    longest = [max(lengths[i] for i in grouped[s : s + batch_size]) for s in range(0, 4000, batch_size)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_a_short_last_batch_stays_last():
    lengths = list(range(1, 101))  # 100 examples, batches of 16: the 7th has 4
    generator = torch.Generator().manual_seed(0)
    order = length_grouped_order(lengths, 16, generator, mega_batch=2)
    assert sorted(order) == list(range(100))
    # each full batch comes from one mega-batch of 32 permuted examples: sorted within it, longest first
    for start in range(0, 96, 16):
        batch = [lengths[i] for i in order[start : start + 16]]
        assert batch == sorted(batch, reverse=True)
    assert len(order[96:]) == 4


def test_ranks_share_each_global_batch():
    lengths, ranks, local = skewed_lengths(640, seed=1), 4, 8
    single = epoch(ResumableDistributedSampler(640, 1, 0, seed=0, lengths=lengths, batch_size=ranks * local), 2)
    shares = [
        epoch(ResumableDistributedSampler(640, ranks, r, seed=0, lengths=lengths, batch_size=ranks * local), 2)
        for r in range(ranks)
    ]
    for k in range(640 // (ranks * local)):
        union = sorted(i for share in shares for i in share[k * local : (k + 1) * local])
        assert union == sorted(single[k * ranks * local : (k + 1) * ranks * local])


def test_a_restart_skips_exactly_what_was_seen():
    lengths = skewed_lengths(300)
    sampler = ResumableDistributedSampler(300, 1, 0, seed=0, lengths=lengths, batch_size=10)
    whole = epoch(sampler, 1)
    sampler.set_start(70)
    assert epoch(sampler, 1) == whole[70:] and len(sampler) == 230


class MeasuredPointsTask(PointsTask):
    def example_lengths(self, dataset):
        return [1 + (i * 7) % 13 for i in range(len(dataset))]


def grouped_trainer(run_dir, callbacks=(), group_by_length=True):
    settings = TrainSettings(
        lr=1e-2, epochs=3, batch_size=16, grad_accum=2, log_every=2, checkpoint_every=3, device="cpu",
        group_by_length=group_by_length,
    )  # fmt: skip
    model = TinyClassifier(dropout=0.3)
    trainer = Trainer(model, MeasuredPointsTask(), PointsDataset(100), None, settings, run_dir, callbacks=callbacks)
    return trainer, model


def test_grouped_training_resumes_bit_exact(tmp_path):
    trainer, expected = grouped_trainer(tmp_path / "whole")
    trainer.fit()
    _, ungrouped = grouped_trainer(tmp_path / "ungrouped", group_by_length=False)
    Trainer.fit(_)
    assert any(
        not torch.equal(a, b) for a, b in zip(trainable_state(expected).values(), trainable_state(ungrouped).values())
    )

    class Killed(Exception):
        pass

    def kill(trainer, step):
        if step == 5:  # mid-epoch: 4 steps per epoch
            raise Killed

    killed, _ = grouped_trainer(tmp_path / "killed", callbacks=[kill])
    with pytest.raises(Killed):
        killed.fit()
    resumed, model = grouped_trainer(tmp_path / "killed")
    resumed.fit(resume=True)
    for name, value in trainable_state(model).items():
        assert torch.equal(value, trainable_state(expected)[name]), name


def test_grouping_needs_a_task_that_measures_lengths(tmp_path):
    settings = TrainSettings(group_by_length=True, device="cpu")
    with pytest.raises(ConfigError, match="group_by_length"):
        Trainer(TinyClassifier(), PointsTask(), PointsDataset(10), None, settings, tmp_path)


TEXTS = ["a gripping film", "dull", "Stocks rallied after the central bank held rates, again and again.", "ok!"]


@pytest.mark.parametrize("name", ["minilm_l6", "roberta_base", "flan_t5_small"])
def test_collate_pads_to_the_longest_text_as_the_tokenizer_does(name):
    backbone = create_backbone(name, scale="tiny", max_length=24)
    batch = backbone.collate(TEXTS)
    reference = backbone.tokenizer(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    assert backbone.input_lengths(TEXTS) == reference["attention_mask"].sum(1).tolist()
    assert backbone.collate(TEXTS)["input_ids"].shape[1] == max(backbone.input_lengths(TEXTS)) <= 24


@pytest.mark.parametrize("name", ["minilm_l6", "roberta_base", "flan_t5_small"])
def test_padding_to_the_batch_longest_gives_the_outputs_of_padding_to_max_length(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, scale="tiny", max_length=96).eval()
    full = backbone.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=96, return_tensors="pt")
    full = {"input_ids": full["input_ids"], "attention_mask": full["attention_mask"]}
    dynamic = backbone.collate(TEXTS)
    assert dynamic["input_ids"].shape[1] < 96
    with torch.inference_mode():
        pooled_full = backbone.pool(backbone(full), full)
        pooled_dynamic = backbone.pool(backbone(dynamic), dynamic)
    assert torch.allclose(pooled_dynamic, pooled_full, atol=1e-5)
    assert math.isfinite(float(pooled_full.abs().sum()))


class CachingClassifier(TinyClassifier):
    """Caches a tensor made in forward per batch shape, as ESM-2's rotary tables are cached per length."""

    def __init__(self) -> None:
        super().__init__()
        self.cached: dict[torch.Size, torch.Tensor] = {}

    def forward(self, batch):
        features = self.body(batch["x"]) * self.scale
        if features.shape not in self.cached:
            self.cached[features.shape] = torch.linspace(0.5, 1.5, features.shape[-1]).expand(features.shape).clone()
        return self.head(features * self.cached[features.shape])  # saved for backward: must be a normal tensor


def test_validation_leaves_no_tensor_that_training_cannot_use(tmp_path):
    # evaluation makes the first batches of 16 (eval_batch_size): then training meets the cached tensor
    settings = TrainSettings(lr=1e-2, epochs=2, batch_size=16, eval_batch_size=16, log_every=1, device="cpu")
    model = CachingClassifier()
    trainer = Trainer(model, PointsTask(), PointsDataset(32), PointsDataset(32, seed=1), settings, tmp_path)
    trainer.evaluate(trainer.val_set)
    result = trainer.fit()  # under inference_mode evaluation: "Inference tensors cannot be saved for backward"
    assert result.steps == 4 and len(result.history) == 2
