"""UniPELT against two independent references: the tiny BERT computed by hand from raw tensors (every
gate, LoRA branch, prefix and adapter), and zoo's own lora, prefix and adapter applied together with the
same tensors (the gates fixed open, shut or constant). Gradients reach the gates, adapters reload
exactly, and merging and mixed batches are refused with the reason."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import zoo.peft as zp
from tests.peft import reference as ref
from tests.peft.method_checks import bert_batch, check_save_load_exact, logits, perturb_trainable, vit_batch
from zoo.errors import ConfigError
from zoo.peft.engine import adapter_modules

R, ALPHA, P = 4, 8, 3
OPTIONS = {"r": R, "lora_alpha": ALPHA, "num_virtual_tokens": P, "size": "tiny", "non_linearity": "relu"}
PARTS = ("lora", "prefix", "adapter")
GATES = {"lora": "lora_gate", "prefix": "prefix_gate", "adapter": "adapter_gate"}
OPEN, SHUT = math.inf, -math.inf


def setup(kind, bert, vit, token_batch, image_batch):
    model, batch = (bert, bert_batch(token_batch)) if kind == "bert" else (vit, vit_batch(image_batch))
    base = copy.deepcopy(model)
    zp.apply(model, "unipelt", modules_to_save=[], **OPTIONS)
    perturb_trainable(model, std=0.3)  # B and W_up leave zero: every part changes the output
    return base, model, batch


def set_gates(model, part, bias):
    """Every gate of ``part`` to the constant sigmoid(bias): W_G = 0 (bias inf: open, -inf: shut)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if f".{GATES[part]}." in name:
                parameter.fill_(bias if name.endswith(".bias") else 0.0)


def composed(base, model, parts, scales=None):
    """The base with zoo's lora, prefix and adapter (pfeiffer) as three adapters holding the unipelt model's
    tensors, each switched on in its own modules (the engine activates one adapter at a time): ``parts`` are
    on, the rest off. ``scales`` multiplies a part's output (LoRA's B, the prefixes, the adapter's W_up, b_up)."""
    reference = copy.deepcopy(base)
    zp.apply(reference, "lora", adapter_name="lora", r=R, lora_alpha=ALPHA, modules_to_save=[])
    zp.apply(reference, "prefix", adapter_name="prefix", num_virtual_tokens=P, modules_to_save=[])
    options = {"variant": "pfeiffer", "size": "tiny", "non_linearity": "relu", "modules_to_save": []}
    zp.apply(reference, "adapter", adapter_name="adapter", **options)
    sources = dict(adapter_modules(model))
    scaled = {"lora": ("lora_B.",), "prefix": ("prompt_embeddings",), "adapter": ("adapter_up.",)}
    with torch.no_grad():
        for name, module in adapter_modules(reference):
            (part,) = module.adapter_names()
            own = module.adapter_state(part)
            state = {k: v.clone() for k, v in sources[name].adapter_state("default").items() if k in own}
            assert state.keys() == own.keys(), f"{name}: unipelt holds {sorted(state)}, {part} {sorted(own)}"
            for key in state:
                if key.startswith(scaled[part]):
                    state[key] *= (scales or {}).get(part, 1.0)
            module.load_adapter_state(part, state, name)
            module.set_active(part if part in parts else None)
    return reference


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_open_gates_give_lora_prefix_and_adapter_together(kind, bert, vit, token_batch, image_batch):
    base, model, batch = setup(kind, bert, vit, token_batch, image_batch)
    for part in PARTS:
        set_gates(model, part, OPEN)
    with torch.no_grad():
        out = logits(model, batch)
        torch.testing.assert_close(out, logits(composed(base, model, PARTS), batch), atol=1e-6, rtol=1e-5)
        for left_out in PARTS:  # every part counts
            others = tuple(part for part in PARTS if part != left_out)
            assert not torch.allclose(out, logits(composed(base, model, others), batch), atol=1e-4)


@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize("shut", ["lora", "adapter"])
def test_a_shut_lora_or_adapter_gate_removes_that_part(kind, shut, bert, vit, token_batch, image_batch):
    base, model, batch = setup(kind, bert, vit, token_batch, image_batch)
    for part in PARTS:
        set_gates(model, part, SHUT if part == shut else OPEN)
    others = tuple(part for part in PARTS if part != shut)
    with torch.no_grad():
        torch.testing.assert_close(
            logits(model, batch), logits(composed(base, model, others), batch), atol=1e-6, rtol=1e-5
        )


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_a_shut_prefix_gate_leaves_zero_prefixes_not_none(kind, bert, vit, token_batch, image_batch):
    """G_P scales P_K and P_V (the paper's formulation): at 0 the prefix positions hold zero keys and values,
    which still take exp(0) of each softmax, so the model is not the one without prefixes."""
    base, model, batch = setup(kind, bert, vit, token_batch, image_batch)
    for part in PARTS:
        set_gates(model, part, SHUT if part == "prefix" else OPEN)
    with torch.no_grad():
        out = logits(model, batch)
        zero_prefixes = composed(base, model, PARTS, scales={"prefix": 0.0})
        torch.testing.assert_close(out, logits(zero_prefixes, batch), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(out, logits(composed(base, model, ("lora", "adapter")), batch), atol=1e-4)


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_constant_gates_scale_each_part(kind, bert, vit, token_batch, image_batch):
    base, model, batch = setup(kind, bert, vit, token_batch, image_batch)
    scales = {"lora": 0.3, "prefix": 0.6, "adapter": 0.8}
    for part, scale in scales.items():
        set_gates(model, part, math.log(scale / (1 - scale)))
    with torch.no_grad():
        expected = logits(composed(base, model, PARTS, scales=scales), batch)
        torch.testing.assert_close(logits(model, batch), expected, atol=1e-5, rtol=1e-4)


def gated_attention(q, k, v, heads, key_valid):
    batch, tokens, hidden = q.shape
    split = lambda t: t.view(batch, t.shape[1], heads, hidden // heads).transpose(1, 2)
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(hidden // heads)
    scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(batch, tokens, hidden)


def gate(linear, x):
    """mean over each example's tokens (padding included, as the authors' code) of sigmoid(W x + b)."""
    return torch.sigmoid(F.linear(x, linear.weight, linear.bias)).mean(1, keepdim=True)


def layer_norm(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def dense_bert(base, model, input_ids, attention_mask):
    """unipelt on the tiny BERT from raw tensors, with every gate depending on its input."""
    hidden = base.config.hidden_size
    table = model.zoo_prefix.prompt_embeddings["default"].view(P, 2 * len(base.bert.encoder.layer), hidden)
    h = ref.bert_embed(base, input_ids, position_offset=P)  # HF prefix tuning numbers tokens from P
    key_valid = torch.cat([torch.ones(len(input_ids), P, dtype=torch.bool), attention_mask.bool()], dim=1)
    for index, (layer, adapted) in enumerate(zip(base.bert.encoder.layer, model.bert.encoder.layer)):
        own, wrapped = layer.attention.self, adapted.attention.self

        def lora(linear, wrapper, x=h):
            a, b = wrapper.lora_A["default"].weight, wrapper.lora_B["default"].weight
            return F.linear(x, linear.weight, linear.bias) + gate(wrapper.lora_gate["default"], x) * (ALPHA / R) * (
                x @ a.T @ b.T
            )

        prefix_gate = gate(model.zoo_prefix_gates.prefix_gate["default"][index], h)  # (batch, 1, 1)
        keys = torch.cat([prefix_gate * table[:, 2 * index], F.linear(h, own.key.weight, own.key.bias)], dim=1)
        values = torch.cat([prefix_gate * table[:, 2 * index + 1], lora(own.value, wrapped.value)], dim=1)
        a = gated_attention(lora(own.query, wrapped.query), keys, values, own.num_attention_heads, key_valid)
        out = layer.attention.output
        h = layer_norm(F.linear(a, out.dense.weight, out.dense.bias) + h, out.LayerNorm)
        inner = F.gelu(F.linear(h, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
        y = F.linear(inner, layer.output.dense.weight, layer.output.dense.bias)
        wrapper = adapted.output.dense
        down, up = wrapper.adapter_down["default"], wrapper.adapter_up["default"]
        bottleneck = F.linear(F.relu(F.linear(y, down.weight, down.bias)), up.weight, up.bias)
        h = layer_norm(y + gate(wrapper.adapter_gate["default"], y) * bottleneck + h, layer.output.LayerNorm)
    return ref.bert_head(base, h)


def test_bert_matches_the_equations_with_input_dependent_gates(bert, token_batch):
    base, model, batch = setup("bert", bert, None, token_batch, None)
    with torch.no_grad():
        expected = dense_bert(base, model, batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(logits(model, batch), expected, atol=1e-5, rtol=1e-4)
        # the gates do depend on the input: another batch moves them (a constant would not)
        gates = [
            model.zoo_prefix_gates.prefix_gate["default"][0],
            model.bert.encoder.layer[0].output.dense.adapter_gate["default"],
        ]
        h = torch.randn(2, 5, 32)
        assert all(not torch.allclose(gate(g, h)[0], gate(g, h)[1]) for g in gates)


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_each_example_is_gated_by_its_own_tokens(kind, bert, vit, token_batch, image_batch):
    """Gates average over an example's tokens, never over the batch: a row alone gives the same output."""
    _, model, batch = setup(kind, bert, vit, token_batch, image_batch)
    with torch.no_grad():
        together = logits(model, batch)
        for row in range(len(together)):
            alone = {key: value[row : row + 1] for key, value in batch.items()}
            torch.testing.assert_close(logits(model, alone)[0], together[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_gradients_reach_every_gate(kind, bert, vit, token_batch, image_batch):
    _, model, batch = setup(kind, bert, vit, token_batch, image_batch)
    F.cross_entropy(logits(model, batch), batch["labels"]).backward()
    gates = {name: p for name, p in model.named_parameters() if any(f".{g}." in name for g in GATES.values())}
    assert {name.split(".default")[0].rsplit(".", 1)[-1] for name in gates} == set(GATES.values())
    lora_gates = 1 if kind == "vit" else 2  # the fused qkv; query and value
    assert len(gates) == 2 * 2 * (lora_gates + 2)  # 2 blocks; weight and bias of each gate (+ prefix, adapter)
    for name, parameter in gates.items():
        assert parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_save_and_load_give_the_same_outputs(kind, bert, vit, token_batch, image_batch, tmp_path):
    base, model, batch = setup(kind, bert, vit, token_batch, image_batch)
    check_save_load_exact(base, model, batch, tmp_path / "adapter")
    config, _ = zp.read_adapter_dir(tmp_path / "adapter")
    assert config["zoo"]["method"] == "unipelt" and config["zoo"]["config"]["num_virtual_tokens"] == P


def test_a_plain_lora_adapter_on_the_same_layers_stays_ungated(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "unipelt", adapter_name="gated", modules_to_save=[], **OPTIONS)
    zp.apply(bert, "lora", adapter_name="plain", r=R, lora_alpha=ALPHA, modules_to_save=[])
    perturb_trainable(bert, std=0.3)
    alone = copy.deepcopy(base)
    zp.apply(alone, "lora", r=R, lora_alpha=ALPHA, modules_to_save=[])
    for name, module in adapter_modules(alone):
        module.load_adapter_state("default", bert.get_submodule(name).adapter_state("plain"), name)
    with torch.no_grad():
        torch.testing.assert_close(logits(bert, token_batch), logits(alone, token_batch), atol=1e-6, rtol=1e-5)
        zp.set_active_adapter(bert, "gated")
        assert not torch.allclose(logits(bert, token_batch), logits(alone, token_batch), atol=1e-4)


def test_merge_is_refused_because_the_lora_gate_depends_on_the_input(bert):
    zp.apply(bert, "unipelt", **OPTIONS)
    for merge in (zp.merge, zp.merge_and_unload):
        with pytest.raises(
            ConfigError, match="uses unipelt, which scales its LoRA update by a gate computed from each"
        ):
            merge(bert)
    assert not zp.get_method("unipelt").mergeable


def test_mixed_batches_are_refused_with_the_reason(vit, image_batch):
    """On timm's Attention prefix rows mix with any others (on HF attention prefix tuning already asks every row
    to use a prefix of one length), so the refusal here is unipelt's own."""
    zp.apply(vit, "unipelt", adapter_name="a", **OPTIONS)
    zp.apply(vit, "lora", adapter_name="b")
    batch = vit_batch(image_batch)
    with pytest.raises(ConfigError, match="unipelt at zoo_prefix_gates cannot run a mixed batch: its prefix gate"):
        with zp.mixed(vit, ["a", "b", None, "a"]):
            logits(vit, batch)
    with zp.mixed(vit, ["b", "b", None, "b"]):  # rows of other adapters still mix on the same layers
        logits(vit, batch)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"r": 0}, r"unipelt: r=0 is not allowed; r must be an integer > 0"),
        ({"size": "tiny", "reduction_factor": 4}, r"unipelt: size='tiny' and reduction_factor=4 both set"),
        ({"non_linearity": "elu"}, r"unipelt: non_linearity='elu' is not allowed"),
        ({"layers": [0]}, r"unipelt: layers=\[0\] does not apply; the method goes through every block"),
    ],
)
def test_bad_options_are_refused_naming_them(bert, options, message):
    with pytest.raises(ConfigError, match=message):
        zp.apply(bert, "unipelt", **options)
    assert not list(adapter_modules(bert))  # nothing is left behind
