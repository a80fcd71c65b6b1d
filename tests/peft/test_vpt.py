"""Visual prompt tuning against the base blocks run by hand on [CLS, prompts, tokens]."""

import copy
import math

import pytest
import torch

import zoo.peft as zp
from tests.peft import reference as ref
from tests.peft.method_checks import (
    bert_batch,
    check_disable_exact,
    check_loss_decreases,
    check_save_load_exact,
    logits,
    perturb_trainable,
    trainable_names,
    vit_batch,
)
from zoo.errors import ConfigError

P = 3


def with_prompts(x, prompts):
    return torch.cat([x[:, :1], prompts.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)


def replace_prompts(x, prompts):
    return torch.cat([x[:, :1], prompts.expand(x.shape[0], -1, -1), x[:, 1 + P :]], dim=1)


@pytest.mark.parametrize("deep", [False, True])
def test_vit_matches_blocks_run_on_prompted_sequence(vit, image_batch, deep):
    base = copy.deepcopy(vit)
    zp.apply(vit, "vpt", num_prompts=P, deep=deep, modules_to_save=[])
    perturb_trainable(vit)
    prompts = vit.zoo_vpt.prompt_embeddings["default"].detach()
    assert prompts.shape == ((2 if deep else 1), P, 32)
    images = image_batch[0]
    with torch.no_grad():
        x = with_prompts(ref.vit_embed(base, images), prompts[0])
        for i, block in enumerate(base.blocks):
            if deep and i > 0:
                x = replace_prompts(x, prompts[i])
            x = block(x)
        x = torch.cat([x[:, :1], x[:, 1 + P :]], dim=1)
        torch.testing.assert_close(vit(images), ref.vit_head(base, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("deep", [False, True])
def test_bert_matches_dense_reference_with_padding(bert, token_batch, deep):
    base = copy.deepcopy(bert)
    zp.apply(bert, "vpt", num_prompts=P, deep=deep, modules_to_save=[])
    perturb_trainable(bert)
    prompts = bert.zoo_vpt.prompt_embeddings["default"].detach()
    ids, mask = token_batch["input_ids"], token_batch["attention_mask"].bool()
    valid = torch.cat([mask[:, :1], torch.ones(ids.shape[0], P, dtype=torch.bool), mask[:, 1:]], dim=1)
    with torch.no_grad():
        h = with_prompts(ref.bert_embed(base, ids), prompts[0])
        for i, layer in enumerate(base.bert.encoder.layer):
            if deep and i > 0:
                h = replace_prompts(h, prompts[i])
            h = ref.bert_layer(layer, h, valid)
        h = torch.cat([h[:, :1], h[:, 1 + P :]], dim=1)
        torch.testing.assert_close(logits(bert, token_batch), ref.bert_head(base, h), atol=1e-5, rtol=1e-4)


def test_only_prompts_and_head_train_and_xavier_bound(vit, bert):
    zp.apply(vit, "vpt", num_prompts=P, deep=True)
    assert trainable_names(vit) == {
        "zoo_vpt.prompt_embeddings.default",
        "head.modules_to_save.default.weight",
        "head.modules_to_save.default.bias",
    }
    bound = math.sqrt(6 / (3 * 8 * 8 + 32))  # fan_in = 3 * patch area, as in the paper
    prompts = vit.zoo_vpt.prompt_embeddings["default"]
    assert prompts.abs().max() <= bound and prompts.abs().max() > bound / 2
    zp.apply(bert, "vpt", num_prompts=P, modules_to_save=[], init="normal")
    assert trainable_names(bert) == {"zoo_vpt.prompt_embeddings.default"}
    assert bert.zoo_vpt.prompt_embeddings["default"].std() < 0.05


@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize("deep", [False, True])
def test_train_save_load_disable(kind, deep, bert, vit, token_batch, image_batch, tmp_path):
    model, batch = (bert, bert_batch(token_batch)) if kind == "bert" else (vit, vit_batch(image_batch))
    base = copy.deepcopy(model)
    zp.apply(model, "vpt", num_prompts=P, deep=deep)
    with torch.no_grad():
        assert not torch.allclose(logits(model, batch), logits(base, batch))  # prompts change outputs from the start
    check_loss_decreases(model, batch)
    check_save_load_exact(base, model, batch, tmp_path / "adapter")
    check_disable_exact(base, model, batch)
    zp.unload(model)
    assert not hasattr(model, "zoo_vpt")
    with torch.no_grad():
        assert torch.equal(logits(model, batch), logits(base, batch))


def test_prompt_dropout_only_in_training(vit, image_batch):
    zp.apply(vit, "vpt", num_prompts=P, prompt_dropout=0.5)
    images = image_batch[0]
    with torch.no_grad():
        assert torch.equal(vit(images), vit(images))
        vit.train()
        torch.manual_seed(0)
        first = vit(images)
        assert not torch.equal(first, vit(images))


@pytest.mark.parametrize(
    "options, option_name",
    [
        ({"num_prompts": 0}, "num_prompts"),
        ({"deep": "yes"}, "deep"),
        ({"prompt_dropout": 1.5}, "prompt_dropout"),
        ({"init": "orthogonal"}, "init"),
        ({"target_modules": ["qkv"]}, "target_modules"),
    ],
)
def test_bad_options(vit, options, option_name):
    with pytest.raises(ConfigError, match=option_name):
        zp.apply(vit, "vpt", **options)


def test_sequence_first_blocks_and_several_stacks_are_refused():
    from torch import nn

    from zoo.peft.structure import Structure

    class Block(nn.Module):
        def __init__(self, batch_first):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def structure(blocks):
        return Structure(
            name="toy",
            blocks=blocks,
            attention="attn",
            attention_kind="mha",
            qkv="attn",
            attention_out="attn.out_proj",
            ffn_in="fc1",
            ffn_out="fc2",
        )

    model = nn.Module()
    model.blocks = nn.Sequential(Block(batch_first=False))
    with pytest.raises(ConfigError, match=r"vpt: .*\(tokens, batch, dim\)"):
        zp.apply(model, "vpt", structure=structure(r"blocks\.\d+"), modules_to_save=[])
    model.encoder, model.decoder = nn.Sequential(Block(True)), nn.Sequential(Block(True))
    with pytest.raises(ConfigError, match="vpt: .*several stacks"):
        zp.apply(model, "vpt", structure=structure(r"(encoder|decoder)\.\d+"), modules_to_save=[])
