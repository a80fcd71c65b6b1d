"""DoRA, (IA)^3 and KAdaptation on slices of nn.MultiheadAttention.in_proj_weight (open_clip's
attention), each against a copy of the module whose in_proj_weight / in_proj_bias were set by hand
from the raw adapter tensors; merge, bit-exact unmerge, save/load, disable, unload and training."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.peft as zp
from tests.peft.test_lora import randomise_trainable
from zoo.errors import ConfigError

DIM, HEADS = 8, 2


class Toy(nn.Module):
    """One batch-first nn.MultiheadAttention (called with a padding mask) and a classifier."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.head = nn.Linear(DIM, 3)

    def forward(self, x, padding=None):
        return self.head(self.attn(x, x, x, key_padding_mask=padding, need_weights=False)[0].mean(1))


def kron_update(factors, u, v, scaling):
    """sum_i A_i kron (u_i v_i^T): u (n, out/n, r), v (n, in/n, r)."""
    return scaling * sum(torch.kron(factors[i], u[i] @ v[i].T) for i in range(factors.shape[0]))


def dora_rows(weight, a, b, magnitude, scaling):
    adapted = weight + scaling * b @ a
    return magnitude[:, None] * adapted / torch.linalg.vector_norm(adapted, dim=1, keepdim=True)


def reference_tensors(method, layer, weight, bias, factors=None):
    """in_proj_weight and in_proj_bias as the method's equation (with the options in METHODS) makes
    them, from raw tensors; ``factors``: KAdaptation's shared A when it lives in another layer."""
    weight, bias = weight.clone(), bias.clone()
    dim = weight.shape[1]
    rows = {"q": slice(0, dim), "k": slice(dim, 2 * dim), "v": slice(2 * dim, 3 * dim)}
    if method == "dora":
        magnitude = layer.lora_magnitude_vector["default"]
        for i, name in enumerate("qv"):
            a, b = layer.lora_A["default"][name].weight, layer.lora_B["default"][name].weight
            weight[rows[name]] = dora_rows(weight[rows[name]], a, b, magnitude[i * dim : (i + 1) * dim], 2.0)
    elif method == "ia3":
        vector = layer.ia3_l["default"].flatten()
        for i, name in enumerate("kv"):  # rescaling rows and bias = rescaling the k and v projections
            weight[rows[name]] *= vector[i * dim : (i + 1) * dim, None]
            bias[rows[name]] *= vector[i * dim : (i + 1) * dim]
    else:
        factors = layer.zoo_kadaptation.kadaptation_A["default"] if factors is None else factors
        u, v = layer.kadaptation_u["default"], layer.kadaptation_v["default"]
        for i, name in enumerate("qv"):
            weight[rows[name]] += kron_update(factors, u[i], v[i], 1.5)
    return weight, bias


METHODS = {
    "dora": {"r": 2, "lora_alpha": 4, "target_modules": ["attn[q,v]"]},
    "ia3": {"target_modules": ["attn[k,v]"]},
    "kadaptation": {"n": 2, "r": 2, "alpha": 3.0, "target_modules": ["attn[q,v]"]},
}


def batch():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, DIM, generator=generator)
    padding = torch.zeros(4, 5, dtype=torch.bool)
    padding[2, 3:] = True
    return x, padding


@pytest.mark.parametrize("method", sorted(METHODS))
def test_matches_hand_set_in_proj_and_merges_exactly(method):
    torch.manual_seed(0)
    model = Toy().eval()
    base = copy.deepcopy(model)
    zp.apply(model, method, modules_to_save=[], **METHODS[method])
    x, padding = batch()
    with torch.no_grad():
        assert torch.equal(model(x, padding), base(x, padding))  # identity at init
    randomise_trainable(model, std=0.5)
    if method == "ia3":
        with torch.no_grad():
            model.attn.ia3_l["default"].add_(1.0)
    layer = model.attn
    reference = copy.deepcopy(base)
    with torch.no_grad():
        weight, bias = reference_tensors(method, layer, base.attn.in_proj_weight, base.attn.in_proj_bias)
        reference.attn.in_proj_weight.copy_(weight)
        reference.attn.in_proj_bias.copy_(bias)
        expected = reference(x, padding)
        torch.testing.assert_close(model(x, padding), expected, atol=1e-5, rtol=1e-5)
        zp.merge(model)
        torch.testing.assert_close(model(x, padding), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.base_layer.in_proj_weight, weight, atol=1e-6, rtol=1e-5)
        zp.unmerge(model)
        assert torch.equal(layer.base_layer.in_proj_weight, base.attn.in_proj_weight)
        assert torch.equal(layer.base_layer.in_proj_bias, base.attn.in_proj_bias)
        torch.testing.assert_close(model(x, padding), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_save_load_disable_unload(method, tmp_path):
    torch.manual_seed(0)
    model = Toy().train()
    base = copy.deepcopy(model).eval()
    zp.apply(model, method, modules_to_save=[], **METHODS[method])
    x, padding = batch()
    labels = torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(model(x, padding), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert model.attn.base_layer.in_proj_weight.grad is None  # the base stays frozen
    model.eval()
    zp.save_adapter(model, tmp_path / "adapter")
    loaded = zp.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    with torch.no_grad():
        adapted = model(x, padding)
        assert not torch.allclose(adapted, base(x, padding))
        assert torch.equal(loaded(x, padding), adapted)
        with zp.disabled(model):
            assert torch.equal(model(x, padding), base(x, padding))
    zp.unload(model)
    assert type(model.attn) is nn.MultiheadAttention
    with torch.no_grad():
        assert torch.equal(model(x, padding), base(x, padding))


def test_ia3_without_selector_scales_q_k_and_v_and_refuses_feedforward():
    model = Toy()
    zp.apply(model, "ia3", target_modules=["attn"], modules_to_save=[])
    assert model.attn.ia3_l["default"].shape == (3 * DIM, 1)
    with pytest.raises(ConfigError, match="feedforward_modules"):
        zp.apply(Toy(), "ia3", target_modules=["attn"], feedforward_modules=["attn"], modules_to_save=[])


def test_ia3_on_attention_has_no_peft_file_format(tmp_path):
    """peft's IA3 cannot rescale rows of in_proj_weight, so the adapter is saved in zoo's format only."""
    import json

    model = Toy()
    zp.apply(model, "ia3", target_modules=["attn[k,v]"], modules_to_save=[])
    zp.save_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert "peft_type" not in config and config["zoo"]["method"] == "ia3"


@pytest.mark.parametrize("method", ["dora", "ia3", "kadaptation"])
def test_different_kdim_is_refused(method):
    model = nn.Module()
    model.attn = nn.MultiheadAttention(DIM, HEADS, kdim=4, vdim=4)
    with pytest.raises(ConfigError, match="kdim == vdim == embed_dim"):
        zp.apply(
            model,
            method,
            target_modules=["attn[q,v]"],
            modules_to_save=[],
            **({"n": 2} if method == "kadaptation" else {}),
        )
