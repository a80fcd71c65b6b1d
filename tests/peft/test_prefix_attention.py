"""Prefix tuning on attention modules that take no key/value cache: torch's nn.MultiheadAttention
(open_clip), torchaudio's wav2vec2 SelfAttention and fair-esm's rotary MultiheadAttention, each
against a hand-written attention over [prefix; tokens] (and nn.MultiheadAttention also against
its own add_bias_kv, which appends one extra key/value), plus the adapter contract on small
models built from these modules."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.peft as zp
from tests.peft.method_checks import perturb_trainable
from zoo.peft.structure import Structure

P = 3
HIDDEN, HEADS = 16, 2


def layer_prefixes(model, layers, hidden=HIDDEN, count=P):
    """Keys and values per layer from the raw (P, layers * 2 * hidden) table, HF PEFT's layout."""
    table = model.zoo_prefix.prompt_embeddings["default"].detach().view(count, layers * 2, hidden)
    return [(table[:, 2 * i], table[:, 2 * i + 1]) for i in range(layers)]


def rotate(x, positions):
    """Rotary position embedding (RoFormer, rotate-half layout as in fair-esm) of x (..., tokens, d)."""
    d = x.shape[-1]
    angles = positions[:, None].float() * (1.0 / 10000 ** (torch.arange(0, d, 2).float() / d))[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return x * cos + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1) * sin


def reference_attention(
    x, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, heads, prefix_k, prefix_v, bias=None, key_padding=None, rotary=False
):
    """Self-attention of x (batch, tokens, hidden) over [prefix; tokens], from raw weights.

    bias: additive scores over token keys (broadcast to (batch, heads, tokens, tokens));
    key_padding: (batch, tokens) bool, True = padding. Returns the output and head-averaged weights.
    """
    batch, tokens, hidden = x.shape
    head_dim = hidden // heads
    split = lambda t: t.reshape(batch, -1, heads, head_dim).transpose(1, 2)
    q, k, v = split(x @ w_q.T + b_q), split(x @ w_k.T + b_k), split(x @ w_v.T + b_v)
    if rotary:  # tokens at positions 0..T-1; prefix keys stay as learned
        positions = torch.arange(tokens)
        q, k = rotate(q, positions), rotate(k, positions)
    k = torch.cat([split(prefix_k.expand(batch, -1, -1)), k], dim=2)
    v = torch.cat([split(prefix_v.expand(batch, -1, -1)), v], dim=2)
    count = prefix_k.shape[0]
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    token_scores = scores[..., count:]
    if bias is not None:
        token_scores = token_scores + bias
    if key_padding is not None:
        token_scores = token_scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    weights = torch.cat([scores[..., :count], token_scores], dim=-1).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, hidden)
    return out @ w_o.T + b_o, weights.mean(1)


# -- small models of each attention kind ----------------------------------------------------
class Block(nn.Module):
    def __init__(self, attention, call):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(HIDDEN), attention
        self.fc1, self.fc2 = nn.Linear(HIDDEN, 32), nn.Linear(32, HIDDEN)
        self.call = call

    def forward(self, x, padding):
        x = x + self.call(self.attn, self.norm(x), padding)
        return x + self.fc2(F.gelu(self.fc1(x)))


class Toy(nn.Module):
    """Two blocks, mean-pooled over real tokens, and a classifier; inputs (batch, tokens, hidden) and a
    padding mask (True = padding)."""

    def __init__(self, make_attention, call):
        super().__init__()
        self.blocks = nn.ModuleList([Block(make_attention(), call) for _ in range(2)])
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x, padding):
        for block in self.blocks:
            x = block(x, padding)
        keep = (~padding).unsqueeze(-1).float()
        return self.head((x * keep).sum(1) / keep.sum(1))


def call_multihead(attn, h, padding):
    return attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]


def call_torchaudio(attn, h, padding):
    mask = (-10000.0 * padding.float())[:, None, None, :].expand(-1, 1, h.shape[1], -1)  # as torchaudio's encoder
    return attn(h, attention_mask=mask)[0]


def call_esm(attn, h, padding):  # fair-esm works sequence-first
    return attn(h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), key_padding_mask=padding)[0].transpose(0, 1)


def multihead():
    return nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)


def torchaudio_attention():
    from torchaudio.models.wav2vec2.components import SelfAttention

    return SelfAttention(HIDDEN, HEADS)


def esm_attention():
    from esm.multihead_attention import MultiheadAttention

    return MultiheadAttention(HIDDEN, HEADS, self_attention=True, use_rotary_embeddings=True)


def structure(kind):
    parts = dict(
        blocks=r"blocks\.\d+", attention="attn", attention_out="fc1", ffn_in="fc1", ffn_out="fc2", heads=("head",)
    )
    if kind == "multihead":
        return Structure(name="toy-mha", attention_kind="mha", qkv="attn", **parts)
    return Structure(
        name=f"toy-{kind}",
        attention_kind="separate",
        query="attn.q_proj",
        key="attn.k_proj",
        value="attn.v_proj",
        **parts,
    )


KINDS = {
    "multihead": (multihead, call_multihead),
    "torchaudio": (torchaudio_attention, call_torchaudio),
    "esm": (esm_attention, call_esm),
}


def toy(kind):
    # The domain packages register these libraries' attention forwards with zoo.peft.
    if kind == "torchaudio":
        pytest.importorskip("torchaudio")
        import zoo_domains.speech  # noqa: F401
    if kind == "esm":
        pytest.importorskip("esm")
        import zoo_domains.protein  # noqa: F401
    torch.manual_seed(0)
    return Toy(*KINDS[kind]).eval()


def inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, HIDDEN, generator=generator)
    padding = torch.zeros(4, 6, dtype=torch.bool)
    padding[1, 4:] = True
    return x, padding


def separate_weights(attn):
    return [t for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj) for t in (proj.weight, proj.bias)]


def multihead_weights(attn):
    w, b = attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)
    return [w[0], b[0], w[1], b[1], w[2], b[2], attn.out_proj.weight, attn.out_proj.bias]


# -- dense references -------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("bool_attn_mask", [False, True])
def test_multihead_attention_matches_dense_reference(batch_first, need_weights, bool_attn_mask):
    model = toy("multihead")
    for block in model.blocks:
        block.attn.batch_first = batch_first
    zp.apply(model, "prefix", structure=structure("multihead"), num_virtual_tokens=P, modules_to_save=[])
    attn = model.blocks[1].attn
    prefix_k, prefix_v = layer_prefixes(model, 2)[1]
    x, padding = inputs()
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)  # True = may not attend
    attn_mask = causal if bool_attn_mask else torch.zeros(6, 6).masked_fill(causal, float("-inf"))
    given = x if batch_first else x.transpose(0, 1)
    with torch.no_grad():
        out, weights = attn(
            given, given, given, key_padding_mask=padding, attn_mask=attn_mask, need_weights=need_weights
        )
        expected, expected_weights = reference_attention(
            x,
            *multihead_weights(attn),
            HEADS,
            prefix_k,
            prefix_v,
            bias=torch.zeros(6, 6).masked_fill(causal, float("-inf")),
            key_padding=padding,
        )
    torch.testing.assert_close(out if batch_first else out.transpose(0, 1), expected, atol=1e-5, rtol=1e-5)
    if need_weights:
        assert weights.shape == (4, 6, P + 6)
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)
    else:
        assert weights is None
    with torch.no_grad():  # an unbatched (tokens, hidden) input is one row of the batch
        alone = attn(
            given.select(1 - int(batch_first), 0),
            given.select(1 - int(batch_first), 0),
            given.select(1 - int(batch_first), 0),
        )[0]
        row = attn(given, given, given, need_weights=False)[0]
    torch.testing.assert_close(alone, row[0] if batch_first else row[:, 0], atol=1e-5, rtol=1e-5)


def test_one_multihead_prefix_equals_torch_add_bias_kv():
    """nn.MultiheadAttention(add_bias_kv=True) appends one learned key/value: a prefix of one,
    placed last, which softmax attention does not tell apart (torch's own implementation)."""
    model = toy("multihead")
    zp.apply(model, "prefix", structure=structure("multihead"), num_virtual_tokens=1, modules_to_save=[])
    attn = model.blocks[0].attn
    prefix_k, prefix_v = layer_prefixes(model, 2, count=1)[0]
    reference = nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True, add_bias_kv=True)
    with torch.no_grad():
        for name in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            reference.get_parameter(name).copy_(attn.get_parameter(name))
        reference.bias_k.copy_(prefix_k.view(1, 1, -1))
        reference.bias_v.copy_(prefix_v.view(1, 1, -1))
        x, padding = inputs()
        out, weights = attn(x, x, x, key_padding_mask=padding)
        expected, expected_weights = reference(x, x, x, key_padding_mask=padding)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights[..., 1:], expected_weights[..., :-1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights[..., 0], expected_weights[..., -1], atol=1e-6, rtol=1e-5)


def test_torchaudio_self_attention_matches_dense_reference():
    model = toy("torchaudio")
    zp.apply(model, "prefix", structure=structure("torchaudio"), num_virtual_tokens=P, modules_to_save=[])
    attn = model.blocks[0].attn
    prefix_k, prefix_v = layer_prefixes(model, 2)[0]
    x, padding = inputs()
    mask = (-10000.0 * padding.float())[:, None, None, :].expand(-1, 1, 6, -1)
    with torch.no_grad():
        out, position_bias = attn(x, attention_mask=mask)
        expected, _ = reference_attention(x, *separate_weights(attn), HEADS, prefix_k, prefix_v, bias=mask)
    assert position_bias is None
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("need_head_weights", [False, True])
def test_esm_rotary_attention_matches_dense_reference(need_head_weights):
    """Token queries and keys are rotated by position; the prefix keys are not."""
    model = toy("esm")
    zp.apply(model, "prefix", structure=structure("esm"), num_virtual_tokens=P, modules_to_save=[])
    attn = model.blocks[1].attn
    prefix_k, prefix_v = layer_prefixes(model, 2)[1]
    x, padding = inputs()
    sequence_first = x.transpose(0, 1)
    with torch.no_grad():
        out, weights = attn(
            sequence_first,
            sequence_first,
            sequence_first,
            key_padding_mask=padding,
            need_head_weights=need_head_weights,
        )
        expected, expected_weights = reference_attention(
            x,
            *separate_weights(attn),
            HEADS,
            prefix_k,
            prefix_v,
            key_padding=padding,
            rotary=True,
        )
    torch.testing.assert_close(out.transpose(0, 1), expected, atol=1e-5, rtol=1e-5)
    if need_head_weights:
        assert weights.shape == (HEADS, 4, 6, P + 6)
        weights = weights.mean(0)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)


# -- the adapter contract on each kind ----------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_train_save_load_disable_unload(kind, tmp_path):
    model = toy(kind)
    base = copy.deepcopy(model)
    x, padding = inputs()
    labels = torch.tensor([0, 1, 2, 1])
    zp.apply(model, "prefix", structure=structure(kind), num_virtual_tokens=P, modules_to_save=[])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"zoo_prefix.prompt_embeddings.default"}
    with torch.no_grad():
        assert not torch.allclose(model(x, padding), base(x, padding))
        # a padded row gets what it gets alone: padding is masked, the prefixes are not
        torch.testing.assert_close(model(x, padding)[1], model(x[1:2, :4], padding[1:2, :4])[0], atol=1e-5, rtol=1e-5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x, padding), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    zp.save_adapter(model, tmp_path / "adapter")
    loaded = zp.load_adapter(copy.deepcopy(base), tmp_path / "adapter", structure=structure(kind))
    with torch.no_grad():
        assert torch.equal(loaded(x, padding), model(x, padding))
        adapted = model(x, padding)
        with zp.disabled(model):
            assert torch.equal(model(x, padding), base(x, padding))
        assert torch.equal(model(x, padding), adapted)
    zp.unload(model)
    assert not hasattr(model, "zoo_prefix")
    assert all("forward" not in block.attn.__dict__ for block in model.blocks)  # the library's forward is back
    with torch.no_grad():
        assert torch.equal(model(x, padding), base(x, padding))


def test_prefix_reaches_multihead_attention_under_lora():
    """LoRA on in_proj_weight calls the wrapped nn.MultiheadAttention with its own weight; the
    prefixes go into that module, so both adapters work on one attention."""
    model = toy("multihead")
    x, padding = inputs()
    zp.apply(model, "lora", adapter_name="lora", target_modules=["attn[q,v]"], modules_to_save=[], r=2)
    perturb_trainable(model)
    with torch.no_grad():
        lora_out = model(x, padding)
    zp.apply(
        model,
        "prefix",
        adapter_name="prefix",
        structure=structure("multihead"),
        num_virtual_tokens=P,
        modules_to_save=[],
    )
    attn = model.blocks[0].attn
    assert "forward" in attn.base_layer.__dict__
    h = torch.randn(2, 5, HIDDEN)
    table = model.zoo_prefix.prompt_embeddings["prefix"].detach().view(P, 4, HIDDEN)
    with torch.no_grad():
        expected, _ = reference_attention(h, *multihead_weights(attn.base_layer), HEADS, table[:, 0], table[:, 1])
        torch.testing.assert_close(attn(h, h, h, need_weights=False)[0], expected, atol=1e-5, rtol=1e-5)
        zp.set_active_adapter(model, "lora")
        assert torch.equal(model(x, padding), lora_out)
