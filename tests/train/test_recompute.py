"""Gradient checkpointing: blocks really run twice in training, and the updates do not change."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_bert, tiny_vit
from tests.train.helpers import PointsDataset, PointsTask, TinyClassifier
from zoo import peft
from zoo.errors import ConfigError
from zoo.train import Trainer, TrainSettings
from zoo.train.recompute import enable_gradient_checkpointing


class Images(torch.utils.data.Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(16, 3, 32, 32, generator=generator)

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return self.images[index], index % 3


class ImageTask:
    main_metric, greater_is_better = "accuracy", True

    def collate(self, examples):
        return torch.stack([x for x, _ in examples]), torch.tensor([y for _, y in examples])

    def loss(self, model, batch, labels):
        return F.cross_entropy(model(batch), labels)

    def evaluate(self, model, dataset, batch_size):
        return {"accuracy": 0.0}


class Tokens(Images):
    def __init__(self):
        self.tokens = torch.randint(1, 100, (16, 10), generator=torch.Generator().manual_seed(0))

    def __getitem__(self, index):
        return self.tokens[index], index % 3


class TokenTask(ImageTask):
    def loss(self, model, batch, labels):
        return F.cross_entropy(model(input_ids=batch).logits, labels)


CASES = {
    "transformers": (
        lambda: peft.apply(tiny_bert(), "lora", r=4),
        Tokens,
        TokenTask,
        "bert.encoder.layer.0.attention.self.query",
    ),
    "structure": (lambda: peft.apply(tiny_vit(), "lora", r=4), Images, ImageTask, "blocks.0.attn.qkv"),
}


@pytest.mark.parametrize("case", CASES)
def test_blocks_are_recomputed_and_updates_unchanged(tmp_path, case):
    build, dataset, task, inner_name = CASES[case]
    results = {}
    for enabled in (False, True):
        model = build()
        calls = []
        # a pre-hook inside the block: recomputation may stop early, before post-hooks would run
        model.get_submodule(inner_name).register_forward_pre_hook(lambda *args, calls=calls: calls.append(1))
        settings = TrainSettings(lr=1e-2, max_steps=2, batch_size=8, gradient_checkpointing=enabled, device="cpu")
        Trainer(model, task(), dataset(), None, settings, tmp_path / str(enabled)).fit()
        results[enabled] = (len(calls), {n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
    assert results[False][0] == 2 and results[True][0] == 4  # forward once more in each backward
    for name, value in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], value, rtol=1e-5, atol=1e-6)


def test_structure_checkpointing_is_off_in_eval_and_survives_deepcopy():
    model = peft.apply(tiny_vit(), "lora", r=4)
    assert "around 2 blocks" in enable_gradient_checkpointing(model)
    copied = copy.deepcopy(model)
    assert copied.blocks[0].forward.__self__ is copied.blocks[0]
    images = torch.randn(2, 3, 32, 32)
    copied.eval()
    torch.testing.assert_close(copied(images), model.eval()(images))


def test_models_without_blocks_get_a_clear_error(tmp_path):
    settings = TrainSettings(max_steps=1, gradient_checkpointing=True, device="cpu")
    with pytest.raises(ConfigError, match="train.gradient_checkpointing=true: TinyClassifier"):
        Trainer(TinyClassifier(), PointsTask(), PointsDataset(8), None, settings, tmp_path).fit()


def test_transformers_models_are_switched_by_the_name_they_support():
    """transformers 5.24 renamed gradient_checkpointing_enable to activation_checkpointing_enable (the old
    name warns, and goes in v6): the new one is called where it exists, the old one otherwise."""
    calls = []

    class Old(torch.nn.Module):
        supports_gradient_checkpointing = True

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            calls.append(("gradient", gradient_checkpointing_kwargs))

    class New(Old):
        def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None):
            calls.append(("activation", activation_checkpointing_kwargs))

    assert "activation checkpointing on <model>" in enable_gradient_checkpointing(New())
    enable_gradient_checkpointing(Old())
    assert calls == [("activation", {"use_reentrant": False}), ("gradient", {"use_reentrant": False})]
