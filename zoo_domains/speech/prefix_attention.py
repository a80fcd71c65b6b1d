"""Prefix tuning on torchaudio's wav2vec2 / HuBERT ``SelfAttention``, which takes no key/value cache.

Its additive ``attention_mask`` ``(batch, 1, frames, frames)`` is extended so every frame attends
to every prefix; ``position_bias`` and ``key_padding_mask`` are unused there, as in the original.
See :mod:`zoo.peft.prefix_attention` for the contract of the forward.
"""

from __future__ import annotations

import torch.nn.functional as F

from zoo.peft.prefix_attention import join_prefix, prepend_attended, register_prefix_attention


def torchaudio_forward(prefixes, index, attn, x, attention_mask=None, position_bias=None, key_padding_mask=None):
    prefix = prefixes.current_prefix(index)
    if prefix is None:
        return type(attn).forward(attn, x, attention_mask, position_bias, key_padding_mask)
    batch, length, _ = x.shape
    shape = (batch, length, attn.num_heads, attn.head_dim)
    q, k, v = (projection(x).view(*shape).transpose(2, 1) for projection in (attn.q_proj, attn.k_proj, attn.v_proj))
    k, v = join_prefix(prefix[0], k), join_prefix(prefix[1], v)
    mask = prepend_attended(attention_mask, prefix[0].shape[-2])  # additive (batch, 1, frames, frames)
    dropout = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return attn.out_proj(out.transpose(1, 2).reshape(batch, length, -1)), None


register_prefix_attention(
    "torchaudio.models.wav2vec2.components",
    "SelfAttention",
    torchaudio_forward,
    description="torchaudio's wav2vec2 SelfAttention",
    row_prefixes=True,
)
