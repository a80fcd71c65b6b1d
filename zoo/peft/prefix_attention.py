"""Prefix keys and values for attention modules that take no key/value cache.

HF attention modules accept a cache, through which :mod:`zoo.peft.prefix` hands them the
prefixes. The modules below compute q, k and v inside their own forward, so prefix tuning
replaces that forward, on the instance, by an equivalent one that prepends the layer's P
prefix keys and values (and restores the class's forward on unload). Each forward here
computes exactly what the original does, plus the prefixes:

- timm's ``Attention`` (ViT): fused ``qkv`` Linear, ``F.scaled_dot_product_attention``.
- torch's ``nn.MultiheadAttention`` (open_clip): q, k, v from ``in_proj_weight``/``in_proj_bias``;
  ``attn_mask`` and ``key_padding_mask`` (bool: True = masked, or additive floats) are
  extended so that every query attends to every prefix.

Domain packages register the attention classes of their own libraries with
:func:`register_prefix_attention` (zoo_domains.speech and zoo_domains.protein do), using
:func:`join_prefix` and :func:`prepend_attended` from here.

Every forward takes the owning :class:`~zoo.peft.prefix.PrefixTuning` (``prefixes``) and the
layer index; ``prefixes.current_prefix(index)`` gives (keys, values), each (P, hidden), or
None when no prefix adapter is active, in which case the original forward runs unchanged.
A forward registered with ``row_prefixes=True`` also takes (batch, P, hidden) prefixes, one per
row (unipelt gates each example's prefix): :func:`join_prefix` does, and P is ``shape[-2]``.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo.peft.config import ConfigError
from zoo.peft.mixed import in_row_order, multihead_by_rows


def prepend_attended(mask: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """Extend the key axis (last) of an attention mask by ``count`` always-attended positions in front.

    For masks where True or 1 means "attend" and additive float masks (0 attends).
    """
    if mask is None:
        return None
    if not torch.is_tensor(mask):
        raise TypeError(
            f"prefix tuning cannot extend an attention mask of type {type(mask).__name__}; "
            f"use attn_implementation 'sdpa' or 'eager'"
        )
    # bool: True attends; float: additive bias, 0 attends; integer (1/0 padding masks): 1 attends.
    fill = True if mask.dtype == torch.bool else (0.0 if mask.is_floating_point() else 1)
    return torch.cat([mask.new_full((*mask.shape[:-1], count), fill), mask], dim=-1)


def join_prefix(prefix: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """[prefix; states] along the token axis: prefix (P, hidden), or (batch, P, hidden) with each row's
    own (a mixed batch), states (batch, heads, tokens, head_dim)."""
    batch, heads, _, head_dim = states.shape
    prefix = prefix.to(states.dtype)
    if prefix.dim() == 2:
        prefix = prefix.unsqueeze(0).expand(batch, -1, -1)
    return torch.cat([prefix.view(batch, -1, heads, head_dim).transpose(1, 2), states], dim=2)


# -- timm Attention ---------------------------------------------------------------------
def timm_forward(prefixes, index, attn, x, attn_mask=None, is_causal=False):
    prefix = prefixes.current_prefix(index)
    if prefix is None:
        return type(attn).forward(attn, x, attn_mask=attn_mask, is_causal=is_causal)
    batch, tokens, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    k, v = join_prefix(prefix[0], k), join_prefix(prefix[1], v)
    if is_causal:  # tokens see every prefix and the tokens before them
        attn_mask = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()
    attn_mask = prepend_attended(attn_mask, prefix[0].shape[-2])
    x = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=attn.attn_drop.p if attn.training else 0.0
    )
    x = attn.norm(x.transpose(1, 2).reshape(batch, tokens, -1))
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def timm_rows(attn, groups, held, call, args, kwargs, module):
    """timm's Attention called once per adapter of a mixed batch's rows (x and a per-row mask split)."""
    arguments = dict(zip(("x", "attn_mask", "is_causal"), args), **kwargs)
    x, mask = arguments["x"], arguments.get("attn_mask")

    def rows_of(group):
        sub = dict(arguments, x=x.index_select(0, group.index))
        if mask is not None and mask.dim() == 4 and mask.shape[0] > 1:  # (batch, heads or 1, tokens, keys)
            sub["attn_mask"] = mask.index_select(0, group.index)
        return call((), sub)

    return in_row_order(groups.run(held, x.shape[0], x.device, rows_of, module))


def multihead_rows(attn, groups, held, call, args, kwargs, module):
    """torch's nn.MultiheadAttention called once per adapter of a mixed batch's rows."""
    return multihead_by_rows(attn, groups, held, lambda name, arguments: call((), arguments), args, kwargs, module)


# -- torch nn.MultiheadAttention --------------------------------------------------------
def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """nn.MultiheadAttention's masks (bool: True = do not attend; float: added) as additive floats."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def multihead_forward(
    prefixes,
    index,
    attn,
    query,
    key,
    value,
    key_padding_mask=None,
    need_weights=True,
    attn_mask=None,
    average_attn_weights=True,
    is_causal=False,
):
    prefix = prefixes.current_prefix(index)
    if prefix is None:
        return type(attn).forward(
            attn,
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
    if is_causal and attn_mask is None:  # as nn.MultiheadAttention: is_causal only hints that attn_mask is causal
        raise RuntimeError("Need attn_mask if specifying the is_causal hint")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
    elif not attn.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    batch, tokens, _ = query.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    weights = attn.in_proj_weight.chunk(3)
    biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    split = lambda states: states.reshape(batch, states.shape[1], heads, head_dim).transpose(1, 2)
    q, k, v = (split(F.linear(x, w, b)) for x, w, b in zip((query, key, value), weights, biases))
    k, v = join_prefix(prefix[0], k), join_prefix(prefix[1], v)
    mask = None
    if attn_mask is not None:  # (tokens, keys) or (batch * heads, tokens, keys)
        mask = _additive(attn_mask, q.dtype)
        mask = mask.view(batch, heads, tokens, -1) if attn_mask.dim() == 3 else mask.view(1, 1, tokens, -1)
    if key_padding_mask is not None:  # (batch, keys)
        padding = _additive(key_padding_mask, q.dtype)[:, None, None, :]
        mask = padding if mask is None else mask + padding
    mask = prepend_attended(mask, prefix[0].shape[-2])
    dropout = attn.dropout if attn.training else 0.0
    if need_weights:
        scores = q @ k.transpose(-1, -2) * head_dim**-0.5
        probabilities = (scores if mask is None else scores + mask).softmax(-1)
        probabilities = F.dropout(probabilities, dropout) if dropout else probabilities
        out = probabilities @ v
        returned = probabilities.mean(1) if average_attn_weights else probabilities
        returned = returned.squeeze(0) if unbatched else returned
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        returned = None
    out = F.linear(out.transpose(1, 2).reshape(batch, tokens, -1), attn.out_proj.weight, attn.out_proj.bias)
    if unbatched:
        out = out.squeeze(0)
    elif not attn.batch_first:
        out = out.transpose(0, 1)
    return out, returned


def _check_multihead(attn) -> None:
    if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
        raise ConfigError(
            "prefix: nn.MultiheadAttention with kdim/vdim other than embed_dim, add_bias_kv or add_zero_attn is "
            "not supported; prefixes go into attention with one in_proj_weight and no extra key/value"
        )


# -- dispatch -----------------------------------------------------------------------------
def _library_class(module: str, name: str) -> type[nn.Module] | None:
    # An attention of that class exists only once its library is imported: look, never import here,
    # so a library that fails to load is not mistaken for one that is absent.
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


# (module, class name, forward, configuration check), in registration order.
_KINDS: list[tuple[str, str, Callable, Callable[[nn.Module], None] | None]] = []
_DESCRIPTIONS: list[str] = []
_ROW_SPLITTERS: dict[Callable, Callable] = {}
_ROW_PREFIXES: set[Callable] = set()


def register_prefix_attention(
    module: str,
    class_name: str,
    forward: Callable,
    check: Callable[[nn.Module], None] | None = None,
    description: str | None = None,
    rows: Callable | None = None,
    row_prefixes: bool = False,
) -> None:
    """Teach prefix tuning an attention class that takes no key/value cache.

    ``module`` and ``class_name`` locate the class (its library is never imported here); ``forward``
    is ``forward(prefixes, index, attn, *args, **kwargs)``, computing what the class's forward does
    plus the prefixes; ``check(attn)`` raises ConfigError for a configuration it cannot handle.
    ``rows(attn, groups, held, call, args, kwargs, module)`` lets rows of a mixed batch use different
    prefixes: it calls ``call(args, kwargs)`` with the arguments of each group of rows
    (:meth:`zoo.peft.mixed.RowGroups.run`) and puts the outputs back in row order.
    ``row_prefixes=True`` says that ``forward`` also takes (batch, P, hidden) prefixes, one per row.
    """
    _KINDS.append((module, class_name, forward, check))
    _DESCRIPTIONS.append(description or f"{module}.{class_name}")
    if rows is not None:
        _ROW_SPLITTERS[forward] = rows
    if row_prefixes:
        _ROW_PREFIXES.add(forward)


def takes_row_prefixes(forward: Callable) -> bool:
    """Whether the prefix-aware ``forward`` takes (batch, P, hidden) prefixes, one per row."""
    return forward in _ROW_PREFIXES


def supported_rows() -> str:
    """The attention classes whose calls split by rows, for error messages."""
    return ", ".join(d for d, (_, _, forward, _) in zip(_DESCRIPTIONS, _KINDS) if forward in _ROW_SPLITTERS)


def row_splitter(forward: Callable) -> Callable | None:
    """How to split a call of the prefix-aware ``forward`` by the rows of a mixed batch (None: unknown)."""
    return _ROW_SPLITTERS.get(forward)


def supported() -> str:
    """The attention classes registered, for error messages."""
    return ", ".join(_DESCRIPTIONS)


register_prefix_attention(
    "timm.layers.attention",
    "Attention",
    timm_forward,
    description="timm's Attention",
    rows=timm_rows,
    row_prefixes=True,
)
register_prefix_attention(
    "torch.nn",
    "MultiheadAttention",
    multihead_forward,
    _check_multihead,
    description="torch's nn.MultiheadAttention",
    rows=multihead_rows,
    row_prefixes=True,
)


def prefix_forward(attention: nn.Module) -> Callable | None:
    """The prefix-aware forward for ``attention``, or None when its class is none of the known ones.

    Only a class whose forward is the library's own qualifies: a subclass that overrides it
    may compute something else. Raises ConfigError for a known class in a setting not supported.
    """
    forward_function = type(attention).forward
    for module, name, forward, check in _KINDS:
        if type(attention).__module__.split(".")[0] != module.split(".")[0]:
            continue  # not from this library: no need to import it
        cls = _library_class(module, name)
        if cls is not None and forward_function is cls.forward:
            if check is not None:
                check(attention)
            return forward
    return None
