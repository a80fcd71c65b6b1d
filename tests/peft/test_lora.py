"""LoRA against a dense recomputation of W + (alpha/r) B A, and against HF peft."""

import copy

import peft
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.peft as zp
from zoo.errors import ConfigError


def randomise_trainable(model, seed=0, std=0.3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def test_linear_matches_dense_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    base = copy.deepcopy(model)
    zp.apply(model, "lora", r=2, lora_alpha=6, target_modules=["0", "2"], modules_to_save=[])
    randomise_trainable(model)
    x = torch.randn(3, 6)
    layer0, layer2 = model[0], model[2]
    w0 = base[0].weight + 3.0 * layer0.lora_B["default"].weight @ layer0.lora_A["default"].weight
    w2 = base[2].weight + 3.0 * layer2.lora_B["default"].weight @ layer2.lora_A["default"].weight
    expected = F.linear(F.relu(F.linear(x, w0, base[0].bias)), w2, base[2].bias)
    torch.testing.assert_close(model(x), expected)


def test_rslora_scaling():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    base = copy.deepcopy(model)
    zp.apply(model, "lora", r=4, lora_alpha=8, use_rslora=True, target_modules=["0"], modules_to_save=[])
    randomise_trainable(model)
    x = torch.randn(3, 6)
    layer = model[0]
    delta = (8 / 2.0) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(model(x), F.linear(x, base[0].weight + delta, base[0].bias))


def test_conv2d_matches_dense_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2))
    base = copy.deepcopy(model)
    zp.apply(model, "lora", r=2, lora_alpha=2, target_modules=["0"], modules_to_save=[])
    randomise_trainable(model)
    x = torch.randn(2, 3, 9, 9)
    a, b = model[0].lora_A["default"].weight, model[0].lora_B["default"].weight
    delta = (b.flatten(1) @ a.flatten(1)).view_as(base[0].weight)
    expected = F.conv2d(x, base[0].weight + delta, base[0].bias, stride=2, padding=1)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_fused_qkv_adapts_only_q_and_v_slices(vit):
    base = copy.deepcopy(vit)
    zp.apply(vit, "lora", r=2, lora_alpha=4, target_modules=["qkv[q,v]"])
    randomise_trainable(vit)
    layer = vit.blocks[0].attn.qkv
    assert set(layer.lora_A["default"].keys()) == {"q", "v"}
    dim = base.blocks[0].attn.qkv.in_features
    delta = torch.zeros_like(base.blocks[0].attn.qkv.weight)
    for name, rows in (("q", slice(0, dim)), ("v", slice(2 * dim, 3 * dim))):
        delta[rows] = 2.0 * layer.lora_B["default"][name].weight @ layer.lora_A["default"][name].weight
    tokens = torch.randn(2, 5, dim)
    expected = F.linear(tokens, base.blocks[0].attn.qkv.weight + delta, base.blocks[0].attn.qkv.bias)
    out = layer(tokens)
    torch.testing.assert_close(out, expected)
    # the k slice is exactly the base projection
    base_out = base.blocks[0].attn.qkv(tokens)
    assert torch.equal(out[..., dim : 2 * dim], base_out[..., dim : 2 * dim])


class _FusedAttention(nn.Module):
    def __init__(self, qkv: nn.Linear) -> None:
        super().__init__()
        self.qkv = qkv

    def forward(self, x):
        return self.qkv(x)


class _LinearOwnForward(nn.Linear):
    """Not a plain Linear to the adapter (its own forward): the update is added out of place."""

    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize("linear_class", [nn.Linear, _LinearOwnForward])
@pytest.mark.parametrize("target", ["qkv[q,v]", "qkv[k]", "qkv"])
@pytest.mark.parametrize("token_shape", [(7,), (2, 5)])
def test_fused_slice_forward_and_gradients_match_dense_reference(linear_class, target, token_shape):
    """y = (W + s * [B_q A_q; 0; B_v A_v]) x + b, and the gradients of x, A and B through it."""
    torch.manual_seed(0)
    dim = 4
    model = _FusedAttention(linear_class(dim, 3 * dim))
    base_weight, base_bias = model.qkv.weight.detach().clone(), model.qkv.bias.detach().clone()
    zp.apply(model, "lora", r=2, lora_alpha=3, target_modules=[target], modules_to_save=[])
    randomise_trainable(model)
    layer = model.qkv
    scaling = 3 / 2
    if target == "qkv":
        pairs = {"all": (layer.lora_A["default"], layer.lora_B["default"], slice(0, 3 * dim))}
    else:
        rows = {"q": slice(0, dim), "k": slice(dim, 2 * dim), "v": slice(2 * dim, 3 * dim)}
        pairs = {s: (layer.lora_A["default"][s], layer.lora_B["default"][s], rows[s]) for s in layer.lora_A["default"]}
    x = torch.randn(*token_shape, dim, requires_grad=True)
    upstream = torch.randn(*token_shape, 3 * dim)
    out = model(x)
    (out * upstream).sum().backward()
    reference_x = x.detach().clone().requires_grad_()
    factors = {
        s: (a.weight.detach().clone().requires_grad_(), b.weight.detach().clone().requires_grad_())
        for s, (a, b, _) in pairs.items()
    }
    blocks = []
    for s, (_, _, rows) in pairs.items():
        a, b = factors[s]
        blocks.append(F.pad(scaling * b @ a, (0, 0, rows.start, 3 * dim - rows.stop)))
    expected = F.linear(reference_x, base_weight + sum(blocks), base_bias)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad, reference_x.grad, atol=1e-6, rtol=1e-5)
    for s, (a, b, _) in pairs.items():
        torch.testing.assert_close(a.weight.grad, factors[s][0].grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.weight.grad, factors[s][1].grad, atol=1e-6, rtol=1e-5)
    # the base stays frozen: no gradient reaches it
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None


def test_hook_on_the_base_linear_sees_the_callers_input():
    """The update is added in place on flattened tokens only when nothing observes the base."""
    torch.manual_seed(0)
    model = _FusedAttention(nn.Linear(4, 12))
    zp.apply(model, "lora", r=2, target_modules=["qkv[q,v]"], modules_to_save=[])
    randomise_trainable(model)
    x = torch.randn(2, 5, 4)
    unobserved = model(x)
    seen = []
    model.qkv.base_layer.register_forward_hook(lambda module, args, output: seen.append((args[0].shape, output.shape)))
    torch.testing.assert_close(model(x), unobserved)
    assert seen == [((2, 5, 4), (2, 5, 12))]


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("target", ["qkv[q,v]", "qkv"])
def test_bf16_autocast_matches_fp32(method, target):
    """Under autocast the base output is bf16 while A, B (and m) stay fp32; the update is added
    in the output's dtype and every gradient comes back in its parameter's dtype."""
    torch.manual_seed(0)
    dim = 16
    model = _FusedAttention(nn.Linear(dim, 3 * dim))
    zp.apply(model, method, r=4, lora_alpha=8, target_modules=[target], modules_to_save=[])
    randomise_trainable(model)
    x = torch.randn(2, 5, dim)
    upstream = torch.randn(2, 5, 3 * dim)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def run(autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        grads = torch.autograd.grad((out.float() * upstream).sum(), trainable)
        return out, grads

    reference, reference_grads = run(False)
    out, grads = run(True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.02)
    for parameter, grad, expected in zip(trainable, grads, reference_grads):
        assert grad.dtype == parameter.dtype == torch.float32
        torch.testing.assert_close(grad, expected, atol=0.1, rtol=0.03)


def test_multihead_attention_in_proj_slices():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Block()
    base = copy.deepcopy(model)
    zp.apply(model, "lora", r=2, lora_alpha=2, target_modules=["attn[q,v]"], modules_to_save=[])
    randomise_trainable(model)
    layer = model.attn
    delta = torch.zeros_like(base.attn.in_proj_weight)
    delta[:8] = layer.lora_B["default"]["q"].weight @ layer.lora_A["default"]["q"].weight
    delta[16:] = layer.lora_B["default"]["v"].weight @ layer.lora_A["default"]["v"].weight
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.attn.in_proj_weight += delta
    x = torch.randn(3, 4, 8)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
    loss = model(x).pow(2).mean()
    loss.backward()
    # the gradient reaching A_q is the one through the dense in_proj_weight + [B_q A_q; 0; B_v A_v]
    a_q = layer.lora_A["default"]["q"].weight.detach().clone().requires_grad_()
    b_q, b_v = layer.lora_B["default"]["q"].weight.detach(), layer.lora_B["default"]["v"].weight.detach()
    a_v = layer.lora_A["default"]["v"].weight.detach()
    dense = base.attn.in_proj_weight + torch.cat([b_q @ a_q, torch.zeros(8, 8), b_v @ a_v])
    reference_loss = torch.func.functional_call(base, {"attn.in_proj_weight": dense}, (x,)).pow(2).mean()
    (expected,) = torch.autograd.grad(reference_loss, a_q)
    torch.testing.assert_close(layer.lora_A["default"]["q"].weight.grad, expected, atol=1e-6, rtol=1e-4)
    zp.merge(model)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
    zp.unmerge(model)
    assert torch.equal(model.attn.base_layer.in_proj_weight, base.attn.in_proj_weight)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "kadaptation"])
def test_out_proj_of_multihead_attention_is_refused(method):
    # nn.MultiheadAttention reads out_proj.weight without calling out_proj: a wrapper would never run.
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ConfigError, match=r"never called.*\[q,v\]"):
        zp.apply(model, method, target_modules=["out_proj"], modules_to_save=[])


def test_identity_at_init_and_default_targets(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "lora", r=4)
    inputs = {k: token_batch[k] for k in ("input_ids", "attention_mask")}
    assert torch.equal(bert(**inputs).logits, base(**inputs).logits)
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    expected = {
        f"bert.encoder.layer.{i}.attention.self.{proj}.lora_{ab}.default.weight"
        for i in range(2)
        for proj in ("query", "value")
        for ab in "AB"
    } | {"classifier.modules_to_save.default.weight", "classifier.modules_to_save.default.bias"}
    assert trainable == expected


@pytest.fixture
def trained_lora(bert):
    base = copy.deepcopy(bert)
    zp.apply(bert, "lora", r=4, lora_alpha=8, target_modules=["query", "value"])
    randomise_trainable(bert)
    return base, bert


def test_zoo_adapter_loads_in_peft(trained_lora, token_batch, tmp_path):
    base, model = trained_lora
    inputs = {k: token_batch[k] for k in ("input_ids", "attention_mask")}
    zp.save_adapter(model, tmp_path / "adapter")
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    torch.testing.assert_close(peft_model(**inputs).logits, model(**inputs).logits, atol=1e-6, rtol=1e-5)


def test_peft_adapter_loads_in_zoo(bert, token_batch, tmp_path):
    base = copy.deepcopy(bert)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    peft_model = peft.get_peft_model(bert, config)
    randomise_trainable(peft_model, seed=3)
    peft_model.eval()
    inputs = {k: token_batch[k] for k in ("input_ids", "attention_mask")}
    expected = peft_model(**inputs).logits
    peft_model.save_pretrained(tmp_path / "peft-adapter")
    model = zp.load_adapter(base, tmp_path / "peft-adapter")
    assert zp.list_adapters(model) == {"default": "lora"}
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-6, rtol=1e-5)


def test_unsupported_peft_options_are_refused(bert, tmp_path):
    base = copy.deepcopy(bert)
    peft.get_peft_model(bert, peft.LoraConfig(r=2, target_modules=["query"], bias="all")).save_pretrained(
        tmp_path / "a"
    )
    with pytest.raises(ConfigError, match="bias"):
        zp.load_adapter(base, tmp_path / "a")


def test_merge_unmerge(trained_lora, token_batch):
    base, model = trained_lora
    inputs = {k: token_batch[k] for k in ("input_ids", "attention_mask")}
    unmerged = model(**inputs).logits
    zp.merge(model)
    torch.testing.assert_close(model(**inputs).logits, unmerged, atol=1e-5, rtol=1e-5)
    zp.unmerge(model)
    for (name, tensor), (_, original) in zip(
        zp.unload(copy.deepcopy(model)).state_dict().items(), base.state_dict().items()
    ):
        assert torch.equal(tensor, original), name
    plain = zp.merge_and_unload(model)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(plain(**inputs).logits, unmerged, atol=1e-5, rtol=1e-5)
