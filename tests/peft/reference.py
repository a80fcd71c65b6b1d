"""Hand-written forward passes of the tiny BERT and ViT, for dense references of the
structure-based methods (prefix, vpt, loreft, adapters). They read the base model's raw
weights and never go through zoo code."""

import math

import torch
import torch.nn.functional as F


def attention(x, w_q, b_q, w_k, b_k, w_v, b_v, heads, key_valid=None, prefix_k=None, prefix_v=None):
    """Multi-head self-attention with optional key/value prefixes (P, hidden) in front.

    key_valid: (batch, keys) bool, True where a key may be attended (prefix positions included).
    """
    batch, tokens, hidden = x.shape
    q, k, v = F.linear(x, w_q, b_q), F.linear(x, w_k, b_k), F.linear(x, w_v, b_v)
    if prefix_k is not None:
        k = torch.cat([prefix_k.expand(batch, -1, -1), k], dim=1)
        v = torch.cat([prefix_v.expand(batch, -1, -1), v], dim=1)
    head_dim = hidden // heads
    split = lambda t: t.view(batch, t.shape[1], heads, head_dim).transpose(1, 2)
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(head_dim)
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ split(v)
    return out.transpose(1, 2).reshape(batch, tokens, hidden)


# -- BERT ---------------------------------------------------------------------------
def bert_embed(model, input_ids, position_offset=0):
    embeddings = model.bert.embeddings
    positions = torch.arange(position_offset, position_offset + input_ids.shape[1])
    h = embeddings.word_embeddings.weight[input_ids]
    h = h + embeddings.token_type_embeddings.weight[0] + embeddings.position_embeddings.weight[positions]
    norm = embeddings.LayerNorm
    return F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def bert_layer(layer, h, key_valid=None, prefix_k=None, prefix_v=None):
    """One BertLayer from its raw weights."""
    self_attention = layer.attention.self
    a = attention(
        h,
        self_attention.query.weight,
        self_attention.query.bias,
        self_attention.key.weight,
        self_attention.key.bias,
        self_attention.value.weight,
        self_attention.value.bias,
        self_attention.num_attention_heads,
        key_valid,
        prefix_k,
        prefix_v,
    )
    out = layer.attention.output
    h = F.layer_norm(
        F.linear(a, out.dense.weight, out.dense.bias) + h,
        out.LayerNorm.normalized_shape,
        out.LayerNorm.weight,
        out.LayerNorm.bias,
        out.LayerNorm.eps,
    )
    inner = F.gelu(F.linear(h, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    out = layer.output
    return F.layer_norm(
        F.linear(inner, out.dense.weight, out.dense.bias) + h,
        out.LayerNorm.normalized_shape,
        out.LayerNorm.weight,
        out.LayerNorm.bias,
        out.LayerNorm.eps,
    )


def bert_head(model, h):
    pooled = torch.tanh(F.linear(h[:, 0], model.bert.pooler.dense.weight, model.bert.pooler.dense.bias))
    return F.linear(pooled, model.classifier.weight, model.classifier.bias)


def bool_mask_4d(key_valid, queries):
    """A (batch, 1, queries, keys) bool mask as HF's sdpa path gives to BertLayer."""
    return key_valid[:, None, None, :].expand(-1, 1, queries, -1)


# -- ViT ------------------------------------------------------------------------------
def vit_embed(vit, images):
    x = vit.patch_embed(images)
    x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return x + vit.pos_embed


def vit_block(block, x, prefix_k=None, prefix_v=None):
    """One timm ViT block from its raw weights."""
    qkv = block.attn.qkv
    dim = x.shape[-1]
    w, b = qkv.weight, qkv.bias
    y = block.norm1(x)
    a = attention(
        y,
        w[:dim],
        b[:dim],
        w[dim : 2 * dim],
        b[dim : 2 * dim],
        w[2 * dim :],
        b[2 * dim :],
        block.attn.num_heads,
        None,
        prefix_k,
        prefix_v,
    )
    x = x + F.linear(a, block.attn.proj.weight, block.attn.proj.bias)
    return x + block.mlp(block.norm2(x))


def vit_head(vit, x):
    x = vit.norm(x)
    return vit.head(x[:, 0])
