"""Prefix tuning against a hand-written attention with [prefix; tokens] keys/values, and against HF peft."""

import copy
import inspect
import json

import peft
import pytest
import torch
import transformers
from torch import nn

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
from zoo.peft.structure import Structure

P = 3


def layer_prefixes(model, layers, hidden):
    """Keys and values per layer from the raw (P, layers * 2 * hidden) table, HF PEFT's layout."""
    table = model.zoo_prefix.prompt_embeddings["default"].detach().view(P, layers * 2, hidden)
    return [(table[:, 2 * i], table[:, 2 * i + 1]) for i in range(layers)]


def bert_reference(base, prefixes, input_ids, attention_mask):
    # HF PEFT runs BERT with a P-long key/value cache, so token positions start at P.
    h = ref.bert_embed(base, input_ids, position_offset=P)
    key_valid = torch.cat([torch.ones(input_ids.shape[0], P, dtype=torch.bool), attention_mask.bool()], dim=1)
    for layer, (k, v) in zip(base.bert.encoder.layer, prefixes):
        h = ref.bert_layer(layer, h, key_valid, k, v)
    return ref.bert_head(base, h)


def test_bert_matches_dense_reference(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "prefix", num_virtual_tokens=P, modules_to_save=[])
    perturb_trainable(bert)
    expected = bert_reference(
        base, layer_prefixes(bert, 2, 32), token_batch["input_ids"], token_batch["attention_mask"]
    )
    with torch.no_grad():
        torch.testing.assert_close(logits(bert, token_batch), expected, atol=1e-5, rtol=1e-4)
        # the padded row really is masked: its padding tokens do not change the output
        assert not torch.allclose(logits(bert, {"input_ids": token_batch["input_ids"]}), expected)


def test_vit_matches_dense_reference(vit, image_batch):
    base = copy.deepcopy(vit)
    zp.apply(vit, "prefix", num_virtual_tokens=P, modules_to_save=[])
    perturb_trainable(vit)
    images = image_batch[0]
    x = ref.vit_embed(base, images)
    for block, (k, v) in zip(base.blocks, layer_prefixes(vit, 2, 32)):
        x = ref.vit_block(block, x, k, v)
    with torch.no_grad():
        torch.testing.assert_close(vit(images), ref.vit_head(base, x), atol=1e-5, rtol=1e-4)


def test_only_prefixes_and_head_train(bert, vit):
    zp.apply(bert, "prefix", num_virtual_tokens=P)
    assert trainable_names(bert) == {
        "zoo_prefix.prompt_embeddings.default",
        "classifier.modules_to_save.default.weight",
        "classifier.modules_to_save.default.bias",
    }
    assert bert.zoo_prefix.prompt_embeddings["default"].shape == (P, 2 * 2 * 32)
    zp.apply(vit, "prefix", num_virtual_tokens=P, modules_to_save=[])
    assert trainable_names(vit) == {"zoo_prefix.prompt_embeddings.default"}


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_train_save_load_disable(kind, bert, vit, token_batch, image_batch, tmp_path):
    model, batch = (bert, bert_batch(token_batch)) if kind == "bert" else (vit, vit_batch(image_batch))
    base = copy.deepcopy(model)
    zp.apply(model, "prefix", num_virtual_tokens=P)
    with torch.no_grad():
        assert not torch.allclose(logits(model, batch), logits(base, batch))  # prefixes change outputs from the start
    check_loss_decreases(model, batch)
    check_save_load_exact(base, model, batch, tmp_path / "adapter")
    check_disable_exact(base, model, batch)
    zp.unload(model)
    assert not hasattr(model, "zoo_prefix")
    if kind == "vit":
        assert "forward" not in model.blocks[0].attn.__dict__  # timm's own forward is back
    with torch.no_grad():
        assert torch.equal(logits(model, batch), logits(base, batch))


# HF peft's prefix tuning hands HF models a ``past_key_values`` argument, which transformers 5
# renamed to ``cache``; peft then refuses the model. zoo supports both (the dense-reference tests
# above run on either); the interop tests run where peft itself can, as with requirements.lock.
peft_runs_prefix = pytest.mark.skipif(
    "past_key_values" not in inspect.signature(transformers.BertModel.forward).parameters,
    reason=f"HF peft {peft.__version__}'s prefix tuning needs past_key_values, which transformers "
    f"{transformers.__version__} no longer takes (peft: 'Model does not support past key values')",
)


@peft_runs_prefix
@pytest.mark.parametrize("with_mask", [True, False])
def test_zoo_adapter_loads_in_peft(bert, token_batch, tmp_path, with_mask):
    base = copy.deepcopy(bert)
    zp.apply(bert, "prefix", num_virtual_tokens=P)
    perturb_trainable(bert, std=0.5)
    zp.save_adapter(bert, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["task_type"] == "SEQ_CLS"
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    inputs = {"input_ids": token_batch["input_ids"]}
    if with_mask:
        inputs["attention_mask"] = token_batch["attention_mask"]
    with torch.no_grad():
        torch.testing.assert_close(bert(**inputs).logits, peft_model(**inputs).logits, atol=1e-6, rtol=1e-5)


@peft_runs_prefix
def test_peft_adapter_loads_in_zoo(bert, token_batch, tmp_path):
    base = copy.deepcopy(bert)
    peft_model = peft.get_peft_model(bert, peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))
    perturb_trainable(peft_model, seed=3, std=0.5)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=token_batch["input_ids"], attention_mask=token_batch["attention_mask"]).logits
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    model = zp.load_adapter(base, tmp_path / "peft-adapter")
    assert zp.list_adapters(model) == {"default": "prefix"}
    with torch.no_grad():
        torch.testing.assert_close(logits(model, token_batch), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "options, option_name",
    [
        ({"num_virtual_tokens": 0}, "num_virtual_tokens"),
        ({"prefix_projection": True}, "prefix_projection"),
        ({"target_modules": ["query"]}, "target_modules"),
    ],
)
def test_bad_options(bert, options, option_name):
    with pytest.raises(ConfigError, match=option_name):
        zp.apply(bert, "prefix", **options)


class CustomAttention(nn.Module):
    """An attention of unknown form: nothing tells where its keys and values are made."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        return x


def blocks_of(*attentions):
    model = nn.Sequential()
    model.blocks = nn.Sequential()
    for attention in attentions:
        block = nn.Module()
        block.attn, block.fc1, block.fc2 = attention, nn.Linear(8, 16), nn.Linear(16, 8)
        model.blocks.append(block)
    return model


def test_unknown_attention_is_refused():
    model = blocks_of(CustomAttention(), CustomAttention())
    structure = Structure(
        name="test-custom",
        blocks=r"blocks\.\d+",
        attention="attn",
        attention_kind="fused_qkv",
        qkv="attn.qkv",
        attention_out="fc1",
        ffn_in="fc1",
        ffn_out="fc2",
    )
    with pytest.raises(ConfigError, match="prefix: cannot insert prefixes into CustomAttention"):
        zp.apply(model, "prefix", structure=structure, modules_to_save=[])
    assert not hasattr(model, "zoo_prefix")


def test_unsupported_multihead_attention_setting_is_refused_and_nothing_stays_patched():
    model = blocks_of(
        nn.MultiheadAttention(8, 2, batch_first=True), nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True)
    )
    structure = Structure(
        name="test-mha",
        blocks=r"blocks\.\d+",
        attention="attn",
        attention_kind="mha",
        qkv="attn",
        attention_out="fc1",
        ffn_in="fc1",
        ffn_out="fc2",
    )
    with pytest.raises(ConfigError, match="prefix.*add_bias_kv"):
        zp.apply(model, "prefix", structure=structure, modules_to_save=[])
    assert not hasattr(model, "zoo_prefix")
    assert all("forward" not in block.attn.__dict__ for block in model.blocks)  # the first block's patch is undone
