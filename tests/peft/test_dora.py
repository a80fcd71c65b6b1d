"""DoRA against a dense recomputation of m * (W + dW) / ||W + dW||_c, and against HF peft."""

import copy

import peft
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import zoo.peft as zp
from tests.peft.method_checks import bert_batch, check_loss_decreases
from tests.peft.test_lora import randomise_trainable
from zoo.errors import ConfigError


def inputs_of(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def dense_dora_weight(weight, a, b, magnitude, scaling):
    adapted = weight + scaling * b @ a
    return magnitude.view(-1, 1) * adapted / adapted.norm(dim=1, keepdim=True)


def test_linear_matches_dense_equation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4, bias=False))
    base = copy.deepcopy(model)
    zp.apply(model, "dora", r=2, lora_alpha=6, target_modules=["0", "2"], modules_to_save=[])
    randomise_trainable(model)
    x = torch.randn(3, 6)
    weights = []
    for index in (0, 2):
        layer = model[index]
        weights.append(
            dense_dora_weight(
                base[index].weight,
                layer.lora_A["default"].weight,
                layer.lora_B["default"].weight,
                layer.lora_magnitude_vector["default"],
                3.0,
            )
        )
    expected = F.linear(torch.tanh(F.linear(x, weights[0], base[0].bias)), weights[1])
    torch.testing.assert_close(model(x), expected)


def test_conv2d_matches_dense_equation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    base = copy.deepcopy(model)
    zp.apply(model, "dora", r=2, lora_alpha=4, target_modules=["0"], modules_to_save=[])
    randomise_trainable(model)
    layer = model[0]
    magnitude = layer.lora_magnitude_vector["default"]
    assert magnitude.shape == (1, 8, 1, 1)  # as HF peft stores it for convolutions
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    adapted = base[0].weight + 2.0 * (b.flatten(1) @ a.flatten(1)).view_as(base[0].weight)
    weight = magnitude.view(-1, 1, 1, 1) * adapted / adapted.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(model(x), F.conv2d(x, weight, base[0].bias, padding=1), atol=1e-5, rtol=1e-5)


def test_fused_qkv_slices_match_dense_equation(vit):
    base = copy.deepcopy(vit)
    zp.apply(vit, "dora", r=2, lora_alpha=4)  # default targets on timm: qkv[q,v]
    randomise_trainable(vit)
    layer = vit.blocks[0].attn.qkv
    dim = layer.in_features
    magnitude = layer.lora_magnitude_vector["default"]
    assert magnitude.shape == (2 * dim,)
    weight = base.blocks[0].attn.qkv.weight.clone()
    for i, (name, rows) in enumerate((("q", slice(0, dim)), ("v", slice(2 * dim, 3 * dim)))):
        a, b = layer.lora_A["default"][name].weight, layer.lora_B["default"][name].weight
        weight[rows] = dense_dora_weight(weight[rows], a, b, magnitude[i * dim : (i + 1) * dim], 2.0)
    tokens = torch.randn(2, 5, dim)
    expected = F.linear(tokens, weight, base.blocks[0].attn.qkv.bias)
    out = layer(tokens)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[..., dim : 2 * dim], base.blocks[0].attn.qkv(tokens)[..., dim : 2 * dim])
    zp.merge(vit)
    torch.testing.assert_close(layer(tokens), expected, atol=1e-5, rtol=1e-5)


def test_identity_at_init_and_magnitude_is_row_norm(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "dora", r=4)
    # scale is exactly 1 at init; the base product and its bias may be added in another order than addmm does
    torch.testing.assert_close(
        bert(**inputs_of(token_batch)).logits, base(**inputs_of(token_batch)).logits, atol=1e-6, rtol=0
    )
    layer = bert.bert.encoder.layer[0].attention.self.query
    expected = torch.linalg.vector_norm(base.bert.encoder.layer[0].attention.self.query.weight, dim=1)
    torch.testing.assert_close(layer.lora_magnitude_vector["default"], expected)
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert "bert.encoder.layer.1.attention.self.value.lora_magnitude_vector.default" in trainable
    assert len(trainable) == 2 * 2 * 3 + 2  # (A, B, m) x (query, value) x 2 layers + head


def test_gradient_reaches_magnitude_a_and_b_but_not_the_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    base = copy.deepcopy(model)
    zp.apply(model, "dora", r=2, target_modules=["0"], modules_to_save=[])
    randomise_trainable(model)
    layer = model[0]
    x = torch.randn(4, 6)
    model(x).pow(2).sum().backward()
    a, b, m = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_magnitude_vector["default"]
    for tensor in (a, b, m):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    # Reference with the norm detached (paper sec. 4.3): same gradients.
    a2, b2, m2 = (t.detach().clone().requires_grad_() for t in (a, b, m))
    adapted = base[0].weight + 4.0 * b2 @ a2  # lora_alpha 8 / r 2
    norm = adapted.norm(dim=1, keepdim=True).detach()
    F.linear(x, m2.view(-1, 1) * adapted / norm, base[0].bias).pow(2).sum().backward()
    for ours, reference in ((a, a2), (b, b2), (m, m2)):
        torch.testing.assert_close(ours.grad, reference.grad)
    assert layer.base_layer.weight.grad is None


class _FusedAttention(nn.Module):
    def __init__(self, qkv: nn.Linear) -> None:
        super().__init__()
        self.qkv = qkv

    def forward(self, x):
        return self.qkv(x)


class _LinearOwnForward(nn.Linear):
    """Not a plain Linear to the adapter (its own forward): the general path runs."""

    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize("linear_class", [nn.Linear, _LinearOwnForward])
@pytest.mark.parametrize("target", ["qkv[q,v]", "qkv[k]", "qkv"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("token_shape", [(7,), (2, 5)])
def test_fused_slice_forward_and_gradients_match_dense_equation(linear_class, target, bias, token_shape):
    """Adapted rows: m * (W + dW) x / ||W + dW||_c (norm detached) + b; other rows: W x + b.
    Gradients of x, A, B, m and a trainable bias against that dense equation."""
    torch.manual_seed(0)
    dim = 4
    model = _FusedAttention(linear_class(dim, 3 * dim, bias=bias))
    zp.apply(model, "dora", r=2, lora_alpha=3, target_modules=[target], modules_to_save=[])
    randomise_trainable(model)
    layer = model.qkv
    if bias:
        layer.base_layer.bias.requires_grad_(True)
    weight = layer.base_layer.weight.detach().clone()
    if target == "qkv":
        pairs = {"all": (layer.lora_A["default"], layer.lora_B["default"], range(0, 3 * dim))}
    else:
        rows = {"q": range(0, dim), "k": range(dim, 2 * dim), "v": range(2 * dim, 3 * dim)}
        pairs = {s: (layer.lora_A["default"][s], layer.lora_B["default"][s], rows[s]) for s in layer.lora_A["default"]}
    magnitude = layer.lora_magnitude_vector["default"]
    x = torch.randn(*token_shape, dim, requires_grad=True)
    upstream = torch.randn(*token_shape, 3 * dim)
    (model(x) * upstream).sum().backward()

    reference = {
        s: (a.weight.detach().clone().requires_grad_(), b.weight.detach().clone().requires_grad_())
        for s, (a, b, _) in pairs.items()
    }
    reference_m = magnitude.detach().clone().requires_grad_()
    reference_x = x.detach().clone().requires_grad_()
    reference_bias = layer.base_layer.bias.detach().clone().requires_grad_() if bias else None
    dense_rows, offset = [weight[i] for i in range(3 * dim)], 0
    for s, (_, _, adapted_rows) in pairs.items():
        a, b = reference[s]
        adapted = weight[adapted_rows.start : adapted_rows.stop] + 1.5 * b @ a
        m = reference_m[offset : offset + len(adapted_rows)]
        scaled = m.view(-1, 1) * adapted / adapted.norm(dim=1, keepdim=True).detach()
        for i, row in zip(adapted_rows, scaled):
            dense_rows[i] = row
        offset += len(adapted_rows)
    expected = F.linear(reference_x, torch.stack(dense_rows), reference_bias)
    (expected * upstream).sum().backward()

    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad, reference_x.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(magnitude.grad, reference_m.grad, atol=1e-6, rtol=1e-5)
    for s, (a, b, _) in pairs.items():
        torch.testing.assert_close(a.weight.grad, reference[s][0].grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.weight.grad, reference[s][1].grad, atol=1e-6, rtol=1e-5)
    if bias:
        torch.testing.assert_close(layer.base_layer.bias.grad, reference_bias.grad, atol=1e-6, rtol=1e-5)
    assert layer.base_layer.weight.grad is None


def test_saved_keys_are_peft_keys(bert, tmp_path):
    peft_model = peft.get_peft_model(
        copy.deepcopy(bert),
        peft.LoraConfig(r=4, target_modules=["query", "value"], use_dora=True, modules_to_save=["classifier"]),
    )
    peft_model.save_pretrained(tmp_path / "peft")
    zp.apply(bert, "dora", r=4, target_modules=["query", "value"])
    zp.save_adapter(bert, tmp_path / "zoo")
    assert set(load_file(tmp_path / "zoo" / "adapter_model.safetensors")) == set(
        load_file(tmp_path / "peft" / "adapter_model.safetensors")
    )


@pytest.fixture
def trained_dora(bert):
    base = copy.deepcopy(bert)
    zp.apply(bert, "dora", r=4, lora_alpha=8, target_modules=["query", "value"])
    randomise_trainable(bert)
    return base, bert


def test_zoo_adapter_loads_in_peft(trained_dora, token_batch, tmp_path):
    base, model = trained_dora
    zp.save_adapter(model, tmp_path / "adapter")
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    expected = model(**inputs_of(token_batch)).logits
    torch.testing.assert_close(peft_model(**inputs_of(token_batch)).logits, expected, atol=1e-5, rtol=1e-5)


def test_peft_adapter_loads_in_zoo(bert, token_batch, tmp_path):
    base = copy.deepcopy(bert)
    config = peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["query", "value"], use_dora=True, modules_to_save=["classifier"]
    )
    peft_model = peft.get_peft_model(bert, config)
    randomise_trainable(peft_model, seed=3)
    peft_model.eval()
    expected = peft_model(**inputs_of(token_batch)).logits
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    model = zp.load_adapter(base, tmp_path / "peft-adapter")
    assert zp.list_adapters(model) == {"default": "dora"}
    torch.testing.assert_close(model(**inputs_of(token_batch)).logits, expected, atol=1e-5, rtol=1e-5)


def test_merge_unmerge(trained_dora, token_batch):
    base, model = trained_dora
    unmerged = model(**inputs_of(token_batch)).logits
    zp.merge(model)
    torch.testing.assert_close(model(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)
    zp.unmerge(model)
    restored = zp.unload(copy.deepcopy(model)).state_dict()
    for name, original in base.state_dict().items():
        assert torch.equal(restored[name], original), name
    assert torch.equal(model(**inputs_of(token_batch)).logits, unmerged)
    plain = zp.merge_and_unload(model)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(**inputs_of(token_batch)).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_is_exact(trained_dora, token_batch, tmp_path):
    base, model = trained_dora
    zp.save_adapter(model, tmp_path / "adapter")
    loaded = zp.load_adapter(base, tmp_path / "adapter")
    assert zp.list_adapters(loaded) == {"default": "dora"}
    assert torch.equal(loaded(**inputs_of(token_batch)).logits, model(**inputs_of(token_batch)).logits)


def test_a_few_steps_lower_the_loss(bert, token_batch):
    zp.apply(bert, "dora", r=4, lora_alpha=8)
    bert.train()
    check_loss_decreases(bert, bert_batch(token_batch))


def test_lora_and_dora_adapters_share_a_layer(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "dora", adapter_name="d", r=2, target_modules=["query"])
    zp.apply(bert, "lora", adapter_name="l", r=2, target_modules=["query"])
    randomise_trainable(bert, seed=5)
    zp.set_active_adapter(bert, "d")
    randomise_trainable(bert, seed=6)
    layer = bert.bert.encoder.layer[0].attention.self.query
    assert set(layer.lora_magnitude_vector.keys()) == {"d"}
    base_query = base.bert.encoder.layer[0].attention.self.query
    x = torch.randn(2, 3, 32)
    zp.set_active_adapter(bert, "l")
    lora_weight = base_query.weight + 4.0 * layer.lora_B["l"].weight @ layer.lora_A["l"].weight
    torch.testing.assert_close(layer(x), F.linear(x, lora_weight, base_query.bias))
    with zp.disabled(bert):
        assert torch.equal(bert(**inputs_of(token_batch)).logits, base(**inputs_of(token_batch)).logits)


@pytest.mark.parametrize(
    "options, name", [({"r": 0}, "r"), ({"lora_alpha": -1}, "lora_alpha"), ({"lora_dropout": 1.5}, "lora_dropout")]
)
def test_bad_options_name_the_option(bert, options, name):
    with pytest.raises(ConfigError, match=rf"dora: {name}="):
        zp.apply(bert, "dora", **options)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_the_norm_kept_between_inference_calls_follows_every_change_of_the_weights(mode):
    """Without gradient the norm is kept from call to call; an in-place write to B, to the base weight,
    a load_state_dict or a training step must each give the dense equation of the new weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    zp.apply(model, "dora", r=2, lora_alpha=6, target_modules=["0"], modules_to_save=[])
    randomise_trainable(model)
    layer, x = model[0], torch.randn(3, 6)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode

    def dense():
        weight = dense_dora_weight(
            layer.base_layer.weight,
            layer.lora_A["default"].weight,
            layer.lora_B["default"].weight,
            layer.lora_magnitude_vector["default"],
            3.0,
        )
        return F.linear(x, weight, layer.base_layer.bias)

    calls = []
    compute = layer._weight_norm
    layer._weight_norm = lambda name: calls.append(name) or compute(name)
    with context():
        first = model(x)
        torch.testing.assert_close(model(x), first)
    assert calls == ["default"]  # the second call read the kept norm
    with torch.no_grad():
        torch.testing.assert_close(first, dense())
        layer.lora_B["default"].weight.mul_(3)
    with context():
        torch.testing.assert_close(model(x), dense())
    with torch.no_grad():
        layer.base_layer.weight.add_(0.5)
    with context():
        torch.testing.assert_close(model(x), dense())
    state = {k: v + 0.1 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    with context():
        torch.testing.assert_close(model(x), dense())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(x).square().sum().backward()
    optimizer.step()
    with context():
        torch.testing.assert_close(model(x), dense())
    assert len(calls) == 6  # once per change, once for the training forward (gradients on: nothing kept)
