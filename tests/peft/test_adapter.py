"""Houlsby and Pfeiffer bottleneck adapters against y + W_up act(W_down y + b_down) + b_up on the base model."""

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

PLACES = {
    "bert": {"houlsby": ["attention.output.dense", "output.dense"], "pfeiffer": ["output.dense"]},
    "vit": {"houlsby": ["attn.proj", "mlp.fc2"], "pfeiffer": ["mlp.fc2"]},
}


def blocks_of(kind, model):
    return list(model.bert.encoder.layer) if kind == "bert" else list(model.blocks)


def reference_logits(kind, base, model, variant, batch, activation):
    """The base model with every adapter's equation added to its projection by a hook, from raw tensors."""
    handles = []
    for base_block, block in zip(blocks_of(kind, base), blocks_of(kind, model)):
        for place in PLACES[kind][variant]:
            wrapper = block.get_submodule(place)
            down, up = wrapper.adapter_down["default"], wrapper.adapter_up["default"]

            def hook(module, args, y, wd=down.weight, bd=down.bias, wu=up.weight, bu=up.bias):
                return y + F.linear(activation(F.linear(y, wd, bd)), wu, bu)

            handles.append(base_block.get_submodule(place).register_forward_hook(hook))
    try:
        with torch.no_grad():
            return logits(base, batch)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_matches_dense_reference(kind, variant, bert, vit, token_batch, image_batch):
    model, batch = (bert, bert_batch(token_batch)) if kind == "bert" else (vit, vit_batch(image_batch))
    base = copy.deepcopy(model)
    zp.apply(model, "adapter", variant=variant, size="tiny", non_linearity="gelu", modules_to_save=[])
    perturb_trainable(model, std=0.3)
    with torch.no_grad():
        torch.testing.assert_close(
            logits(model, batch), reference_logits(kind, base, model, variant, batch, F.gelu), atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_trainable_parameters_and_bottleneck(kind, variant, bert, vit):
    model = bert if kind == "bert" else vit
    zp.apply(model, "adapter", variant=variant, reduction_factor=4, modules_to_save=[])
    prefix = "bert.encoder.layer" if kind == "bert" else "blocks"
    expected = {
        f"{prefix}.{i}.{place}.adapter_{side}.default.{tensor}"
        for i in range(2)
        for place in PLACES[kind][variant]
        for side in ("down", "up")
        for tensor in ("weight", "bias")
    }
    assert trainable_names(model) == expected
    assert (
        blocks_of(kind, model)[0].get_submodule(PLACES[kind][variant][0]).adapter_down["default"].out_features
        == 32 // 4
    )


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_identity_train_save_load_disable(kind, bert, vit, token_batch, image_batch, tmp_path):
    model, batch = (bert, bert_batch(token_batch)) if kind == "bert" else (vit, vit_batch(image_batch))
    base = copy.deepcopy(model)
    zp.apply(model, "adapter", size="small")
    with torch.no_grad():
        assert torch.equal(logits(model, batch), logits(base, batch))  # W_up = 0: exactly the base at init
    check_loss_decreases(model, batch)
    check_save_load_exact(base, model, batch, tmp_path / "adapter")
    check_disable_exact(base, model, batch)
    zp.unload(model)
    assert not any("adapter_down" in n for n, _ in model.named_parameters())


def test_size_names_and_default_reduction(vit):
    zp.apply(vit, "adapter", adapter_name="tiny", size="tiny", modules_to_save=[])
    zp.apply(vit, "adapter", adapter_name="default_size", variant="pfeiffer", modules_to_save=[])
    fc2 = vit.blocks[0].mlp.fc2
    assert fc2.adapter_down["tiny"].out_features == 8
    assert fc2.adapter_down["default_size"].out_features == 2  # 32 / 16
    assert "default_size" not in vit.blocks[0].attn.proj.adapter_down  # pfeiffer: FFN only


@pytest.mark.parametrize(
    "options, option_name",
    [
        ({"variant": "serial"}, "variant"),
        ({"reduction_factor": 0}, "reduction_factor"),
        ({"size": "huge"}, "size"),
        ({"size": "tiny", "reduction_factor": 8}, "reduction_factor"),
        ({"non_linearity": "softmax"}, "non_linearity"),
        ({"target_modules": ["query"]}, "target_modules"),
    ],
)
def test_bad_options(bert, options, option_name):
    with pytest.raises(ConfigError, match=option_name):
        zp.apply(bert, "adapter", **options)
