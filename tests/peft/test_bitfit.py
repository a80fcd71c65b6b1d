"""BitFit against a base model whose biases were set to b + delta by hand."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import zoo.peft as zp
from tests.peft.method_checks import bert_batch, check_loss_decreases
from tests.peft.test_lora import randomise_trainable
from zoo.errors import ConfigError
from zoo.peft.io import adapter_tensors


def inputs_of(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def bias_deltas(model):
    """Logical bias name -> delta, read from the adapter's saved tensors."""
    tensors = adapter_tensors(model)
    prefix = "base_model.model."
    return {key[len(prefix) : -len("_delta")]: value for key, value in tensors.items() if key.endswith("bias_delta")}


def reference_with_biases(base, model):
    """``base`` with every adapted bias set to b + delta, and the trained head copied in."""
    reference = copy.deepcopy(base)
    deltas = bias_deltas(model)
    parameters = dict(reference.named_parameters())
    with torch.no_grad():
        for name, delta in deltas.items():
            parameters[name].add_(delta)
    return reference, deltas


def test_trains_exactly_every_bias_but_the_heads(bert):
    base = copy.deepcopy(bert)
    zp.apply(bert, "bitfit")
    biases = {
        n: p.numel() for n, p in base.named_parameters() if n.endswith("bias") and not n.startswith("classifier.")
    }
    head = sum(p.numel() for p in base.classifier.parameters())
    trainable = {n: p for n, p in bert.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == sum(biases.values()) + head
    assert {n.replace(".bias_delta.default", ".bias") for n in trainable if "bias_delta" in n} == set(biases)
    assert {n for n in trainable if "bias_delta" not in n} == {
        "classifier.modules_to_save.default.weight",
        "classifier.modules_to_save.default.bias",
    }


def test_matches_biases_set_directly(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "bitfit", modules_to_save=[])
    randomise_trainable(bert, seed=1, std=0.5)
    reference, deltas = reference_with_biases(base, bert)
    assert "bert.embeddings.LayerNorm.bias" in deltas and "bert.pooler.dense.bias" in deltas
    torch.testing.assert_close(bert(**inputs_of(token_batch)).logits, reference(**inputs_of(token_batch)).logits)


def test_vit_identity_at_init_and_dense_reference(vit, image_batch):
    images, _ = image_batch
    base = copy.deepcopy(vit)
    zp.apply(vit, "bitfit", modules_to_save=[])
    assert torch.equal(vit(images), base(images))
    randomise_trainable(vit, seed=2, std=0.5)
    reference, deltas = reference_with_biases(base, vit)
    assert "patch_embed.proj.bias" in deltas and "blocks.1.norm2.bias" in deltas and "head.bias" not in deltas
    torch.testing.assert_close(vit(images), reference(images), atol=1e-5, rtol=1e-5)
    with zp.disabled(vit):
        assert torch.equal(vit(images), base(images))


def test_target_modules_restricts(bert):
    zp.apply(bert, "bitfit", target_modules=["query", "LayerNorm"], modules_to_save=[])
    trainable = [n for n, p in bert.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 + 2 * 2 + 1  # query x 2 layers, 2 LayerNorms per layer + embeddings
    assert all("query" in n or "LayerNorm" in n for n in trainable)


def test_multihead_attention_biases():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.norm = nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(self.attn(x, x, x, need_weights=False)[0])

    model = Block()
    base = copy.deepcopy(model)
    zp.apply(model, "bitfit", modules_to_save=[])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 24 + 8 + 8
    randomise_trainable(model, seed=3)
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.attn.in_proj_bias += model.attn.in_proj_bias_delta["default"]
        reference.attn.out_proj.bias += model.attn.out_proj_bias_delta["default"]
        reference.norm.bias += model.norm.bias_delta["default"]
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(model(x), reference(x))
    zp.merge(model)
    torch.testing.assert_close(model(x), reference(x))
    zp.unmerge(model)
    assert torch.equal(model.attn.base_layer.out_proj.bias, base.attn.out_proj.bias)


def test_parametrized_modules_are_adapted_copied_and_saved(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(4, 6)), nn.GELU(), nn.Linear(6, 2))
    base = copy.deepcopy(model)
    zp.apply(model, "bitfit", modules_to_save=[])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["0.bias_delta.default", "2.bias_delta.default"]
    randomise_trainable(model, seed=4)
    copied = copy.deepcopy(model)
    x = torch.randn(3, 4)
    assert torch.equal(copied(x), model(x))
    zp.save_adapter(model, tmp_path / "adapter")
    assert set(load_file(tmp_path / "adapter" / "adapter_model.safetensors")) == {
        "base_model.model.0.bias_delta",
        "base_model.model.2.bias_delta",
    }
    loaded = zp.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert torch.equal(loaded(x), model(x))
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference[0].bias += model[0].bias_delta["default"]
        reference[2].bias += model[2].bias_delta["default"]
    torch.testing.assert_close(model(x), reference(x))


def test_composes_with_lora(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "lora", adapter_name="l", r=2, target_modules=["query"])
    zp.apply(bert, "bitfit", adapter_name="b", modules_to_save=[])
    randomise_trainable(bert, seed=5)
    # the bias of the LoRA-wrapped query is adapted once, inside the LoRA wrapper
    assert hasattr(bert.bert.encoder.layer[0].attention.self.query.base_layer, "bias_delta")
    reference, deltas = reference_with_biases(base, bert)
    assert "bert.encoder.layer.0.attention.self.query.bias" in deltas
    torch.testing.assert_close(bert(**inputs_of(token_batch)).logits, reference(**inputs_of(token_batch)).logits)
    zp.delete_adapter(bert, "b")
    zp.delete_adapter(bert, "l")
    assert torch.equal(bert(**inputs_of(token_batch)).logits, base(**inputs_of(token_batch)).logits)
    assert set(dict(bert.named_parameters())) == set(dict(base.named_parameters()))


@pytest.fixture
def trained(bert):
    base = copy.deepcopy(bert)
    zp.apply(bert, "bitfit")
    randomise_trainable(bert, seed=6, std=0.3)
    return base, bert


def test_merge_unmerge(trained, token_batch):
    base, model = trained
    unmerged = model(**inputs_of(token_batch)).logits
    zp.merge(model)
    torch.testing.assert_close(model(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)
    zp.unmerge(model)
    restored = zp.unload(copy.deepcopy(model)).state_dict()
    for name, original in base.state_dict().items():
        assert torch.equal(restored[name], original), name
    plain = zp.merge_and_unload(model)
    assert not any("bias_delta" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_is_exact(trained, token_batch, tmp_path):
    base, model = trained
    zp.save_adapter(model, tmp_path / "adapter")
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.bert.encoder.layer.0.output.LayerNorm.bias_delta" in keys
    assert "base_model.model.classifier.weight" in keys
    loaded = zp.load_adapter(base, tmp_path / "adapter")
    assert torch.equal(loaded(**inputs_of(token_batch)).logits, model(**inputs_of(token_batch)).logits)


def test_a_few_steps_lower_the_loss(bert, token_batch):
    zp.apply(bert, "bitfit")
    bert.train()
    check_loss_decreases(bert, bert_batch(token_batch))


def test_bad_options_name_the_option(bert):
    with pytest.raises(ConfigError, match="target_modules"):
        zp.apply(bert, "bitfit", target_modules=["attention.self"])  # no bias of its own
    with pytest.raises(ConfigError, match="target_modules"):
        zp.apply(bert, "bitfit", target_modules=5)
    assert not any("bias_delta" in n for n, _ in bert.named_parameters())
