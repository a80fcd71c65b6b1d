"""Prefix tuning on fair-esm's ``MultiheadAttention`` (ESM-2): sequence-first, rotary, no key/value cache.

Prefixes have no position: token queries and keys are rotated as before (positions 0..T-1) and
the prefix keys are used unrotated. A prefix key is a free parameter, so any fixed rotation of it
could be learned into it; this is what prefix tuning does on rotary models in HF PEFT (LLaMA's
cached past keys are not rotated again) and in LLaMA-Adapter. See :mod:`zoo.peft.prefix_attention`
for the contract of the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.peft.config import ConfigError
from zoo.peft.prefix_attention import prepend_attended, register_prefix_attention


def esm_forward(
    prefixes,
    index,
    attn,
    query,
    key,
    value,
    key_padding_mask=None,
    incremental_state=None,
    need_weights=True,
    static_kv=False,
    attn_mask=None,
    before_softmax=False,
    need_head_weights=False,
):
    prefix = prefixes.current_prefix(index)
    if prefix is None:
        return type(attn).forward(
            attn,
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            incremental_state=incremental_state,
            need_weights=need_weights,
            static_kv=static_kv,
            attn_mask=attn_mask,
            before_softmax=before_softmax,
            need_head_weights=need_head_weights,
        )
    if incremental_state is not None or static_kv or before_softmax:
        raise RuntimeError(
            "prefix tuning on fair-esm attention runs whole sequences: no incremental_state, static_kv or before_softmax"
        )
    if attn.self_attention:
        key = value = query
    tokens, batch, embed = query.shape  # sequence-first, as fairseq
    heads, head_dim = attn.num_heads, attn.head_dim
    to_heads = lambda states: states.contiguous().view(states.shape[0], batch * heads, head_dim).transpose(0, 1)
    q = to_heads(attn.q_proj(query) * attn.scaling)
    k, v = to_heads(attn.k_proj(key)), to_heads(attn.v_proj(value))
    if attn.rot_emb is not None:
        q, k = attn.rot_emb(q, k)  # tokens only: the prefixes carry no position
    count = prefix[0].shape[0]
    # (P, hidden) -> (batch * heads, P, head_dim), ordered as the tokens' batch * heads axis.
    spread = lambda p: (
        p.to(q.dtype)
        .view(count, heads, head_dim)
        .transpose(0, 1)
        .expand(batch, -1, -1, -1)
        .reshape(-1, count, head_dim)
    )
    k, v = torch.cat([spread(prefix[0]), k], dim=1), torch.cat([spread(prefix[1]), v], dim=1)
    scores = torch.bmm(q, k.transpose(1, 2))
    if attn_mask is not None:  # additive (tokens, keys)
        scores = scores + prepend_attended(attn_mask, count).unsqueeze(0)
    if key_padding_mask is not None:  # (batch, keys), True / 1 = padding
        padding = torch.cat([key_padding_mask.new_zeros(batch, count), key_padding_mask], dim=1).to(torch.bool)
        scores = scores.view(batch, heads, tokens, -1).masked_fill(padding[:, None, None, :], float("-inf"))
        scores = scores.view(batch * heads, tokens, -1)
    probabilities_float = F.softmax(scores.float(), dim=-1)  # float softmax, as fair-esm's utils_softmax
    probabilities = F.dropout(probabilities_float.type_as(scores), p=attn.dropout, training=attn.training)
    out = torch.bmm(probabilities, v).transpose(0, 1).contiguous().view(tokens, batch, embed)
    out = attn.out_proj(out)
    weights = None
    if need_weights or need_head_weights:
        weights = probabilities_float.view(batch, heads, tokens, -1).type_as(out).transpose(1, 0)
        if not need_head_weights:
            weights = weights.mean(dim=0)
    return out, weights


def _check_esm(attn) -> None:
    if attn.bias_k is not None or attn.add_zero_attn:
        raise ConfigError("prefix: fair-esm attention with add_bias_kv or add_zero_attn is not supported")


register_prefix_attention(
    "esm.multihead_attention",
    "MultiheadAttention",
    esm_forward,
    _check_esm,
    description="fair-esm's MultiheadAttention",
)
