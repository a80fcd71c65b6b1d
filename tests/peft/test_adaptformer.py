"""AdaptFormer against FFN(x) + s * W_up relu(W_down x + b_down) + s * b_up, added to the base model by hooks."""

import copy

import pytest
import torch
import torch.nn.functional as F

import zoo.peft as zp
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

FFN = {"bert": ("intermediate.dense", "output.dense"), "vit": ("mlp.fc1", "mlp.fc2")}


def blocks_of(kind, model):
    return list(model.bert.encoder.layer) if kind == "bert" else list(model.blocks)


def reference_logits(kind, base, model, batch, scale):
    handles = []
    ffn_in, ffn_out = FFN[kind]
    for base_block, block in zip(blocks_of(kind, base), blocks_of(kind, model)):
        wrapper = block.get_submodule(ffn_out)
        down, up = wrapper.down_proj["default"], wrapper.up_proj["default"]
        seen = {}
        handles.append(
            base_block.get_submodule(ffn_in).register_forward_pre_hook(
                lambda m, args, seen=seen: seen.update(x=args[0])
            )
        )

        def add_branch(module, args, out, seen=seen, wd=down.weight, bd=down.bias, wu=up.weight, bu=up.bias):
            return out + scale * F.linear(F.relu(F.linear(seen["x"], wd, bd)), wu, bu)

        handles.append(base_block.get_submodule(ffn_out).register_forward_hook(add_branch))
    try:
        with torch.no_grad():
            return logits(base, batch)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_matches_dense_reference(kind, bert, vit, token_batch, image_batch):
    model, batch = (bert, bert_batch(token_batch)) if kind == "bert" else (vit, vit_batch(image_batch))
    base = copy.deepcopy(model)
    zp.apply(model, "adaptformer", bottleneck=5, scale=0.7, modules_to_save=[])
    perturb_trainable(model, std=0.3)
    with torch.no_grad():
        torch.testing.assert_close(
            logits(model, batch), reference_logits(kind, base, model, batch, 0.7), atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_trainable_parameters(kind, bert, vit):
    model = bert if kind == "bert" else vit
    zp.apply(model, "adaptformer", bottleneck=4, modules_to_save=[])
    prefix = "bert.encoder.layer" if kind == "bert" else "blocks"
    expected = {
        f"{prefix}.{i}.{FFN[kind][1]}.{side}_proj.default.{tensor}"
        for i in range(2)
        for side in ("down", "up")
        for tensor in ("weight", "bias")
    }
    assert trainable_names(model) == expected
    down = blocks_of(kind, model)[0].get_submodule(FFN[kind][1]).down_proj["default"]
    assert (down.in_features, down.out_features) == (32, 4)  # reads the FFN's input (hidden size 32)


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_identity_train_save_load_disable(kind, bert, vit, token_batch, image_batch, tmp_path):
    model, batch = (bert, bert_batch(token_batch)) if kind == "bert" else (vit, vit_batch(image_batch))
    base = copy.deepcopy(model)
    zp.apply(model, "adaptformer", bottleneck=8)
    with torch.no_grad():
        assert torch.equal(logits(model, batch), logits(base, batch))  # W_up = 0: exactly the base at init
    check_loss_decreases(model, batch)
    check_save_load_exact(base, model, batch, tmp_path / "adapter")
    check_disable_exact(base, model, batch)
    zp.unload(model)
    assert not any("_proj.default" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(logits(model, batch), logits(base, batch))
    ffn_in = blocks_of(kind, model)[0].get_submodule(FFN[kind][0])
    assert not ffn_in._forward_pre_hooks  # the input hook went with the adapter


def test_dropout_follows_the_model_mode(vit, image_batch):
    zp.apply(vit, "adaptformer", bottleneck=8, adapter_dropout=0.5)
    perturb_trainable(vit, std=0.3)
    images = image_batch[0]
    with torch.no_grad():
        assert torch.equal(vit(images), vit(images))
        vit.train()
        torch.manual_seed(0)
        assert not torch.equal(vit(images), vit(images))


@pytest.mark.parametrize(
    "options, option_name",
    [
        ({"bottleneck": 0}, "bottleneck"),
        ({"scale": -1.0}, "scale"),
        ({"adapter_dropout": 1.0}, "adapter_dropout"),
        ({"target_modules": ["fc2"]}, "target_modules"),
    ],
)
def test_bad_options(vit, options, option_name):
    with pytest.raises(ConfigError, match=option_name):
        zp.apply(vit, "adaptformer", **options)
