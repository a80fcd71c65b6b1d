"""(IA)^3 against base models whose weights were rescaled by hand, and against HF peft."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file

import zoo.peft as zp
from tests.peft.method_checks import bert_batch, check_loss_decreases
from zoo.errors import ConfigError

# Full-name regexes, so that peft and zoo pick the same modules: a plain "output.dense" suffix
# would also match BERT's attention.output.dense.
TARGETS = r".*\.(key|value|layer\.\d+\.output\.dense)"
FEEDFORWARD = r".*\.layer\.\d+\.output\.dense"


def inputs_of(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def randomise_vectors(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ia3_l" in name:
                parameter.copy_(1 + 0.5 * torch.randn(parameter.shape, generator=generator))


def bert_reference(base, model):
    """``base`` with key/value rows and FFN-output columns rescaled by the learned vectors."""
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for i, layer in enumerate(reference.bert.encoder.layer):
            adapted = model.bert.encoder.layer[i]
            for part in ("key", "value"):
                vector = getattr(adapted.attention.self, part).ia3_l["default"].flatten()
                linear = getattr(layer.attention.self, part)
                linear.weight.mul_(vector[:, None])
                linear.bias.mul_(vector)
            layer.output.dense.weight.mul_(adapted.output.dense.ia3_l["default"])
    return reference


def test_default_targets_match_rescaled_dense_weights(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "ia3")
    layer = bert.bert.encoder.layer[0]
    assert layer.attention.self.key.ia3_l["default"].shape == (32, 1)
    assert layer.output.dense.ia3_l["default"].shape == (1, 64)
    assert not hasattr(layer.attention.output.dense, "ia3_l")
    assert not hasattr(layer.attention.self.query, "ia3_l")
    randomise_vectors(bert)
    expected = bert_reference(base, bert)(**inputs_of(token_batch)).logits
    torch.testing.assert_close(bert(**inputs_of(token_batch)).logits, expected, atol=1e-5, rtol=1e-5)


def test_identity_at_init_and_trainable_vectors(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "ia3")
    assert torch.equal(bert(**inputs_of(token_batch)).logits, base(**inputs_of(token_batch)).logits)
    trainable = {n: p.numel() for n, p in bert.named_parameters() if p.requires_grad}
    vectors = {n: c for n, c in trainable.items() if "ia3_l" in n}
    assert len(vectors) == 2 * 3 and sum(vectors.values()) == 2 * (32 + 32 + 64)
    assert set(trainable) - set(vectors) == {
        "classifier.modules_to_save.default.weight",
        "classifier.modules_to_save.default.bias",
    }


def test_fused_qkv_scales_only_k_and_v(vit, image_batch):
    images, _ = image_batch
    base = copy.deepcopy(vit)
    zp.apply(vit, "ia3")  # timm default: attn.qkv[k,v] and mlp.fc2 (feed-forward)
    dim = 32
    assert vit.blocks[0].attn.qkv.ia3_l["default"].shape == (2 * dim, 1)
    assert vit.blocks[0].mlp.fc2.ia3_l["default"].shape == (1, 4 * dim)
    randomise_vectors(vit, seed=1)
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for block, adapted in zip(reference.blocks, vit.blocks):
            kv = adapted.attn.qkv.ia3_l["default"].flatten()
            block.attn.qkv.weight[dim:].mul_(kv[:, None])
            block.attn.qkv.bias[dim:].mul_(kv)
            block.mlp.fc2.weight.mul_(adapted.mlp.fc2.ia3_l["default"])
    expected = reference(images)
    torch.testing.assert_close(vit(images), expected, atol=1e-5, rtol=1e-5)
    tokens = torch.randn(2, 5, dim)
    assert torch.equal(vit.blocks[0].attn.qkv(tokens)[..., :dim], base.blocks[0].attn.qkv(tokens)[..., :dim])
    zp.merge(vit)
    torch.testing.assert_close(vit(images), expected, atol=1e-5, rtol=1e-5)
    zp.unmerge(vit)
    for name, tensor in zp.unload(copy.deepcopy(vit)).state_dict().items():
        assert torch.equal(tensor, base.state_dict()[name]), name


@pytest.fixture
def trained_ia3(bert):
    base = copy.deepcopy(bert)
    zp.apply(bert, "ia3", target_modules=TARGETS, feedforward_modules=FEEDFORWARD)
    randomise_vectors(bert, seed=2)
    randomise_trainable_head(bert)
    return base, bert


def randomise_trainable_head(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and "classifier" in name:
                parameter.add_(0.1)


def test_zoo_adapter_loads_in_peft(trained_ia3, token_batch, tmp_path):
    base, model = trained_ia3
    zp.save_adapter(model, tmp_path / "adapter")
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    feedforward = {n for n, m in peft_model.named_modules() if getattr(m, "is_feedforward", False)}
    assert len(feedforward) == 2 and all(n.endswith("output.dense") and "attention" not in n for n in feedforward)
    torch.testing.assert_close(
        peft_model(**inputs_of(token_batch)).logits, model(**inputs_of(token_batch)).logits, atol=1e-6, rtol=1e-5
    )


def test_peft_adapter_loads_in_zoo(bert, token_batch, tmp_path):
    base = copy.deepcopy(bert)
    config = peft.IA3Config(target_modules=TARGETS, feedforward_modules=FEEDFORWARD, modules_to_save=["classifier"])
    peft_model = peft.get_peft_model(bert, config)
    randomise_vectors(peft_model, seed=3)
    randomise_trainable_head(peft_model)
    peft_model.eval()
    expected = peft_model(**inputs_of(token_batch)).logits
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    zoo_keys = {k for k in load_file(tmp_path / "peft-adapter" / "adapter_model.safetensors")}
    model = zp.load_adapter(base, tmp_path / "peft-adapter")
    assert zp.list_adapters(model) == {"default": "ia3"}
    zp.save_adapter(model, tmp_path / "again")
    assert set(load_file(tmp_path / "again" / "adapter_model.safetensors")) == zoo_keys
    torch.testing.assert_close(model(**inputs_of(token_batch)).logits, expected, atol=1e-6, rtol=1e-5)


def test_peft_adapter_without_feedforward_modules(bert, token_batch, tmp_path):
    base = copy.deepcopy(bert)
    peft_model = peft.get_peft_model(bert, peft.IA3Config(target_modules=["key", "value"], feedforward_modules=[]))
    randomise_vectors(peft_model, seed=4)
    expected = peft_model.eval()(**inputs_of(token_batch)).logits
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    model = zp.load_adapter(base, tmp_path / "peft-adapter")
    torch.testing.assert_close(model(**inputs_of(token_batch)).logits, expected, atol=1e-6, rtol=1e-5)


def test_merge_unmerge(trained_ia3, token_batch):
    base, model = trained_ia3
    unmerged = model(**inputs_of(token_batch)).logits
    zp.merge(model)
    torch.testing.assert_close(model(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)
    zp.unmerge(model)
    restored = zp.unload(copy.deepcopy(model)).state_dict()
    for name, original in base.state_dict().items():
        assert torch.equal(restored[name], original), name
    plain = zp.merge_and_unload(model)
    assert not any("ia3" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_is_exact(trained_ia3, token_batch, tmp_path):
    base, model = trained_ia3
    zp.save_adapter(model, tmp_path / "adapter")
    loaded = zp.load_adapter(base, tmp_path / "adapter")
    assert torch.equal(loaded(**inputs_of(token_batch)).logits, model(**inputs_of(token_batch)).logits)


def test_fused_adapter_round_trip_in_zoo_format(vit, image_batch, tmp_path):
    images, _ = image_batch
    base = copy.deepcopy(vit)
    zp.apply(vit, "ia3")
    randomise_vectors(vit, seed=5)
    zp.save_adapter(vit, tmp_path / "adapter")
    loaded = zp.load_adapter(base, tmp_path / "adapter")
    assert torch.equal(loaded(images), vit(images))


def test_a_few_steps_lower_the_loss(bert, token_batch):
    zp.apply(bert, "ia3")
    bert.train()
    check_loss_decreases(bert, bert_batch(token_batch), lr=3e-2)


def test_bad_options_name_the_option(bert, vit):
    with pytest.raises(ConfigError, match="feedforward_modules"):
        zp.apply(bert, "ia3", feedforward_modules=3)
    with pytest.raises(ConfigError, match="init_ia3_weights"):
        zp.apply(bert, "ia3", init_ia3_weights="yes")
    with pytest.raises(ConfigError, match="feedforward_modules"):
        zp.apply(vit, "ia3", feedforward_modules=["qkv"])
