"""KAdaptation against a dense update built with torch.kron."""

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import zoo.peft as zp
from tests.peft.method_checks import check_loss_decreases, vit_batch
from tests.peft.test_lora import randomise_trainable
from zoo.errors import ConfigError


def inputs_of(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def kron_update(factors, u, v, scaling):
    """sum_i A_i kron (u_i v_i^T) for one slice: u (n, out/n, r), v (n, in/n, r)."""
    return scaling * sum(torch.kron(factors[i], u[i] @ v[i].T) for i in range(factors.shape[0]))


def test_linear_matches_dense_kron_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 4))
    base = copy.deepcopy(model)
    zp.apply(model, "kadaptation", n=4, r=2, alpha=3.0, target_modules=["0", "2"], modules_to_save=[])
    randomise_trainable(model)
    factors = model[0].zoo_kadaptation.kadaptation_A["default"]
    weights = []
    for index in (0, 2):
        u, v = model[index].kadaptation_u["default"], model[index].kadaptation_v["default"]
        assert u.shape[:2] == (1, 4) and v.shape[:2] == (1, 4)
        weights.append(base[index].weight + kron_update(factors, u[0], v[0], 1.5))
    x = torch.randn(5, 8)
    expected = F.linear(torch.tanh(F.linear(x, weights[0], base[0].bias)), weights[1], base[2].bias)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_fused_qkv_slices_match_dense_update(vit, image_batch):
    images, _ = image_batch
    base = copy.deepcopy(vit)
    zp.apply(vit, "kadaptation", n=4, r=1, modules_to_save=[])  # timm default targets: qkv[q,v]
    randomise_trainable(vit, seed=1)
    factors = vit.blocks[0].attn.qkv.zoo_kadaptation.kadaptation_A["default"]
    dim = 32
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for block, adapted in zip(reference.blocks, vit.blocks):
            u, v = adapted.attn.qkv.kadaptation_u["default"], adapted.attn.qkv.kadaptation_v["default"]
            assert u.shape == (2, 4, dim // 4, 1)
            block.attn.qkv.weight[:dim] += kron_update(factors, u[0], v[0], 1.0)
            block.attn.qkv.weight[2 * dim :] += kron_update(factors, u[1], v[1], 1.0)
    torch.testing.assert_close(vit(images), reference(images), atol=1e-5, rtol=1e-5)


def test_identity_at_init_and_shared_slow_weights(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "kadaptation")
    assert torch.equal(bert(**inputs_of(token_batch)).logits, base(**inputs_of(token_batch)).logits)
    layers = [bert.bert.encoder.layer[i].attention.self.query for i in range(2)]
    layers += [bert.bert.encoder.layer[i].attention.self.value for i in range(2)]
    shared = {id(layer.shared["default"].kadaptation_A["default"]) for layer in layers}
    assert shared == {id(layers[0].zoo_kadaptation.kadaptation_A["default"])}
    assert [n for n, _ in bert.named_modules() if n.endswith("zoo_kadaptation")] == [
        "bert.encoder.layer.0.attention.self.query.zoo_kadaptation"
    ]
    # counted once: A (4^3) + per layer u (4 x 8 x 1) and v (4 x 8 x 1), + head
    trainable = [p for p in bert.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 64 + 4 * (32 + 32) + (32 * 3 + 3)
    assert zp.parameter_report(bert).trainable == 64 + 4 * 64 + 99


def test_gradient_reaches_shared_and_fast_weights(bert, token_batch):
    zp.apply(bert, "kadaptation")
    randomise_trainable(bert, seed=2)
    bert(**token_batch).loss.backward()
    assert bert.bert.encoder.layer[0].attention.self.query.zoo_kadaptation.kadaptation_A["default"].grad.abs().sum() > 0
    for i in range(2):
        for name in ("kadaptation_u", "kadaptation_v"):
            assert getattr(bert.bert.encoder.layer[i].attention.self.value, name)["default"].grad.abs().sum() > 0


@pytest.fixture
def trained(bert):
    base = copy.deepcopy(bert)
    zp.apply(bert, "kadaptation", n=2, r=2, alpha=2.0)
    randomise_trainable(bert, seed=3)
    return base, bert


def test_save_load_round_trip_is_exact_and_saves_a_once(trained, token_batch, tmp_path):
    base, model = trained
    zp.save_adapter(model, tmp_path / "adapter")
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert [k for k in keys if "kadaptation_A" in k] == [
        "base_model.model.bert.encoder.layer.0.attention.self.query.zoo_kadaptation.kadaptation_A"
    ]
    assert "base_model.model.bert.encoder.layer.1.attention.self.query.kadaptation_u" in keys
    loaded = zp.load_adapter(base, tmp_path / "adapter")
    assert torch.equal(loaded(**inputs_of(token_batch)).logits, model(**inputs_of(token_batch)).logits)
    zp.delete_adapter(loaded, "default")
    assert not any("kadaptation" in n for n, _ in loaded.named_modules())


def test_merge_unmerge(trained, token_batch):
    base, model = trained
    unmerged = model(**inputs_of(token_batch)).logits
    zp.merge(model)
    torch.testing.assert_close(model(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)
    zp.unmerge(model)
    assert torch.equal(model(**inputs_of(token_batch)).logits, unmerged)
    restored = zp.unload(copy.deepcopy(model)).state_dict()
    assert set(restored) == set(base.state_dict())
    for name, original in base.state_dict().items():
        assert torch.equal(restored[name], original), name
    plain = zp.merge_and_unload(model)
    assert not any("kadaptation" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_two_adapters_have_their_own_slow_weights(bert, token_batch):
    zp.apply(bert, "kadaptation", adapter_name="a")
    zp.apply(bert, "kadaptation", adapter_name="b", n=8, target_modules=["value"])
    first_query = bert.bert.encoder.layer[0].attention.self.query
    first_value = bert.bert.encoder.layer[0].attention.self.value
    assert first_query.zoo_kadaptation.kadaptation_A["a"].shape == (4, 4, 4)
    assert first_value.zoo_kadaptation.kadaptation_A["b"].shape == (8, 8, 8)
    copied = copy.deepcopy(bert)
    layer = copied.bert.encoder.layer[1].attention.self.value
    assert layer.shared["a"] is copied.bert.encoder.layer[0].attention.self.query.zoo_kadaptation
    assert layer.shared["b"] is copied.bert.encoder.layer[0].attention.self.value.zoo_kadaptation
    # deleting "a" removes its factors but keeps "b" working
    zp.delete_adapter(bert, "a")
    assert not hasattr(first_query, "zoo_kadaptation")
    assert zp.list_adapters(bert) == {"b": "kadaptation"}
    bert(**inputs_of(token_batch))


def test_a_few_steps_lower_the_loss(vit, image_batch):
    zp.apply(vit, "kadaptation", r=2)
    vit.train()
    check_loss_decreases(vit, vit_batch(image_batch))


@pytest.mark.parametrize(
    "options, name", [({"n": 0}, "n"), ({"r": 0}, "r"), ({"alpha": 0}, "alpha"), ({"n": 5}, "n=5")]
)
def test_bad_options_name_the_option(bert, options, name):
    with pytest.raises(ConfigError, match=rf"kadaptation: {name}"):
        zp.apply(bert, "kadaptation", **options)
    assert not any("kadaptation" in n for n, _ in bert.named_modules())
