"""Ladder side-tuning (Sung et al. 2022, "LST: Ladder Side-Tuning for Parameter and Memory Efficient
Transfer Learning", arXiv:2206.06522).

A narrow side network of width d_s = d / r beside the frozen backbone reads the backbone's
activations through gated ladders and makes the prediction:

    s_0 = D_0(h_0)                                       h_0: the input of the first block
    s_i = g_i(mu_i * D_i(h_i) + (1 - mu_i) * s_{i-1})    h_i: the output of block i
    mu_i = sigmoid(alpha_i / T)                          alpha_i = 0 at init (mu = 0.5), T = 0.1
    h_L <- U(LN(s_L))                                    replaces the last block's output

D_i: d -> d_s and U: d_s -> d are linear maps (nn.Linear's init); the task head, and whatever
comes between the last block and it (BERT's pooler, ViT's final norm, frozen), reads U(LN(s_L)).
Trainable: D_i, alpha_i, g_i, LN, U (plus ``modules_to_save``, by default the head). Not
mergeable: it adds a network. ``layers`` keeps ladders and side blocks at the chosen blocks only
(the paper's layer dropping); the output still replaces the last block's.

Why it saves memory: the backbone is never backpropagated through. While an lst adapter is the
active one the first block's input is detached and every backbone weight is frozen, so the blocks
build no autograd graph and keep none of their activations; autograd keeps what the side network
needs, each ladder's h_i once (for D_i's weight gradient) and what the frozen modules after the
last block need for the head's gradient to reach U.

Side blocks: the paper copies T5's block at reduced width. Here g_i is one pre-norm transformer block
(attention + GELU MLP) that works beside every structure (BERT, ViT, ESM, wav2vec 2.0, CLIP), with
the backbone's head count, head width / r and MLP width / r; its weights are read from the backbone
block's by structure roles, so the paper's initialisation carries over: ``init="pruned"`` (the
default) copies them structurally pruned by weight magnitude (L1 norm): one set of d_s residual
channels for every block, per head the head_width / r channels and the MLP units of largest norm.
Layer norms start at one and zero. ``init="random"``: g_i as nn.Linear's init.

Mixed batches: rows of lst adapters run their side network on their rows; other rows keep the
backbone's output (lst rows are not detached there: other adapters' rows share the pass).
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from zoo.peft.config import ConfigError, MethodConfig, option, require_choice, require_int_positive, require_positive
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import AdapterModule
from zoo.peft.registry import register_method
from zoo.peft.structure import Structure
from zoo.peft.targeting import base_of
from zoo.strict_model import Number

ROOT_NAME = "zoo_lst"
INITS = ("pruned", "random")
HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads", "n_heads")
MASKS = {
    "key_padding_mask": "padding",
    "src_key_padding_mask": "padding",
    "src_mask": "blocked",
    "attention_mask": "attended",
    "attn_mask": "attended",
}
"""Mask arguments of blocks; float masks are additive, boolean ones are True on padded keys (padding, a
(batch, keys) mask), on forbidden query-key pairs (blocked, torch's layers) or on attended ones (HF, SDPA)."""


class LstConfig(MethodConfig):
    reduction_factor: Number = option(
        8, help="r: the side network's width is the backbone's / r; head width and MLP width shrink by r too."
    )
    gate_temperature: Number = option(0.1, help="T in mu_i = sigmoid(alpha_i / T), the ladder gates.")
    init: str = option(
        "pruned",
        help="'pruned': side blocks start from the backbone blocks' weights, structurally pruned by magnitude "
        "(the paper's); 'random': nn.Linear's init.",
    )
    num_heads: int | None = option(None, help="Attention heads of the side blocks; None: the backbone's.")

    def check(self) -> None:
        super().check()
        if not self.reduction_factor >= 1:
            raise ConfigError(
                f"lst: reduction_factor={self.reduction_factor!r} is not allowed; the side network is narrower than "
                f"the backbone, so it must be a number >= 1 (the paper uses 8)"
            )
        require_positive(self, "gate_temperature")
        require_choice(self, "init", INITS)
        if self.num_heads is not None:
            require_int_positive(self, "num_heads")
        if self.target_modules is not None:
            raise ConfigError(
                f"lst: target_modules={self.target_modules!r} is not used; the side network reads every block's "
                f"output (choose blocks with layers); leave it unset"
            )

    def narrow(self, width: int) -> int:
        return max(1, round(width / self.reduction_factor))


class SideBlock(nn.Module):
    """A pre-norm transformer block: x + O(attention(LN(x))), then x + W2 gelu(W1 LN(x))."""

    def __init__(self, width: int, heads: int, head_width: int, ffn_width: int) -> None:
        super().__init__()
        inner = heads * head_width
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.query, self.key, self.value = (nn.Linear(width, inner) for _ in range(3))
        self.attention_out = nn.Linear(inner, width)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn_in = nn.Linear(width, ffn_width)
        self.ffn_out = nn.Linear(ffn_width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, tokens, _ = x.shape
        normed = self.attention_norm(x)
        q, k, v = (
            p(normed).view(batch, tokens, self.heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value)
        )
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
        x = x + self.attention_out(attended.transpose(1, 2).reshape(batch, tokens, -1))
        return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


class SideNetwork(nn.Module):
    """One adapter's side network: the ladders' down-projections and gates, the side blocks, LN and U."""

    def __init__(self, dim: int, width: int, block_shape: tuple[int, int, int], ladders: list[int], temperature: float):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(dim, width) for _ in range(len(ladders) + 1))
        self.gate_alpha = nn.Parameter(torch.zeros(len(ladders)))
        self.blocks = nn.ModuleList(SideBlock(width, *block_shape) for _ in ladders)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, dim)
        self.ladder_of_block = {block: position for position, block in enumerate(ladders)}
        self.temperature = temperature

    def gates(self) -> torch.Tensor:
        """mu_i of every ladder."""
        return torch.sigmoid(self.gate_alpha / self.temperature)

    def ladder(
        self, position: int, hidden: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        mu = torch.sigmoid(self.gate_alpha[position] / self.temperature)
        return self.blocks[position](mu * self.down[position + 1](hidden) + (1 - mu) * state, mask)

    def finish(self, state: torch.Tensor) -> torch.Tensor:
        return self.up(self.norm(state))


class LadderSideNetworks(AdapterModule):
    """Every lst adapter's side network, attached to the model root; hooks on the blocks feed it."""

    adapter_groups = ("side_network",)
    mixes_rows = True

    def __init__(self, blocks: list[nn.Module], sequence_first: bool) -> None:
        super().__init__()
        self.side_network = nn.ModuleDict()
        self.sequence_first = sequence_first
        self._states: dict[str, torch.Tensor] = {}
        self._mask: torch.Tensor | None = None  # the block's attention mask, additive
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for index, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(partial(self._before_block, index), with_kwargs=True))
            last = index == len(blocks) - 1
            self._handles.append(block.register_forward_hook(partial(self._after_block, index, last)))

    def _runs(self, hidden: torch.Tensor) -> list[tuple[str, torch.Tensor | None]]:
        """(adapter, its rows; None: all) for each lst adapter computing in this pass."""
        if self.row_groups is None:
            return [] if self.active is None else [(self.active, None)]
        axis = 1 if self.sequence_first else 0
        self.row_groups.check(hidden.shape[axis], self)
        groups = self.row_groups.by_adapter(self.adapter_names(), hidden.device)
        return [(group.name, group.index) for group in groups if group.name is not None]

    def network(self, name: str) -> SideNetwork:
        return cast(SideNetwork, self.side_network[name])

    def _batch_first(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.transpose(0, 1) if self.sequence_first else hidden

    def _before_block(self, index: int, module, args, kwargs):
        hidden = args[0] if args else next((kwargs[k] for k in ("hidden_states", "x") if k in kwargs), None)
        if not torch.is_tensor(hidden):
            raise RuntimeError("lst: cannot find the hidden states among the block's arguments")
        runs = self._runs(hidden)
        if not runs:
            return None
        found = _block_mask(args, kwargs)
        self._mask = None if found is None else _additive_mask(*found, self._batch_first(hidden))
        if index > 0:
            return None
        embedded = self._batch_first(hidden).detach()
        self._states = {
            name: self.network(name).down[0](embedded if rows is None else embedded.index_select(0, rows))
            for name, rows in runs
        }
        if self.row_groups is not None or not hidden.requires_grad:
            return None
        # The active adapter alone: the blocks see a detached input and frozen weights, so they build no graph.
        if args:
            return (hidden.detach(), *args[1:]), kwargs
        return args, {key: value.detach() if value is hidden else value for key, value in kwargs.items()}

    def _after_block(self, index: int, last: bool, module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        runs = self._runs(first)
        if not runs:
            return None
        hidden = self._batch_first(first)
        for name, rows in runs:
            network = self.network(name)
            position = network.ladder_of_block.get(index)
            if position is not None:
                ladder_input = (hidden if rows is None else hidden.index_select(0, rows)).detach()
                mask = self._mask
                if mask is not None and rows is not None and mask.dim() == 4 and mask.shape[0] > 1:
                    mask = mask.index_select(0, rows)
                self._states[name] = network.ladder(position, ladder_input, self._states[name], mask)
        if not last:
            return None
        replaced = hidden
        for name, rows in runs:
            side_output = self.network(name).finish(self._states[name]).to(hidden.dtype)
            replaced = side_output if rows is None else replaced.index_copy(0, rows, side_output)
        self._states, self._mask = {}, None
        replaced = self._batch_first(replaced)
        return (replaced, *output[1:]) if isinstance(output, tuple) else replaced

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def unwrap(self) -> nn.Module | None:
        return None


def _block_mask(args: tuple, kwargs: dict) -> tuple[torch.Tensor, str] | None:
    """The attention mask a block was called with, and its kind (see :data:`MASKS`)."""
    for key, kind in MASKS.items():
        if torch.is_tensor(kwargs.get(key)):
            return kwargs[key], kind
    if len(args) > 1 and torch.is_tensor(args[1]):  # HF encoders and torchaudio pass it second, positionally
        return args[1], "attended"
    return None


def _additive_mask(mask: torch.Tensor, kind: str, hidden: torch.Tensor) -> torch.Tensor:
    """The block's mask as an additive mask over (batch, heads, queries, keys), for the side attention."""
    shape, tokens = tuple(mask.shape), hidden.shape[1]
    if kind == "padding" and mask.dim() == 2:
        mask = mask[:, None, None, :]
    if mask.shape[-1] != tokens or mask.dim() not in (2, 4) or (mask.dim() == 2 and mask.shape[0] != tokens):
        raise RuntimeError(
            f"lst: the block's attention mask of shape {shape} cannot be read for {tokens} tokens; the "
            f"side network takes (batch or 1, heads or 1, queries or 1, keys), (queries, keys) or a (batch, keys) "
            f"padding mask"
        )
    if not mask.is_floating_point():
        attended = mask.bool() if kind == "attended" else ~mask.bool()
        mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~attended, torch.finfo(hidden.dtype).min)
    return mask


# -- the backbone blocks' weights, by structure role, and the pruned initialisation ------------------------------
Weights = dict[str, tuple[torch.Tensor, torch.Tensor | None]]
"""Role -> (weight, bias) of one backbone block, as nn.Linear stores them (out, in)."""


def _linear(structure: Structure, model: nn.Module, block: str, role: str) -> nn.Linear:
    module = base_of(structure.submodule(model, block, getattr(structure, role)))
    if not isinstance(module, nn.Linear):
        raise ConfigError(
            f"lst: {block}.{getattr(structure, role)} ({role}) is a {type(module).__name__}; the side blocks take "
            f"their widths and initial weights from the backbone block's nn.Linear projections"
        )
    return module


def _pair(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return linear.weight.detach(), None if linear.bias is None else linear.bias.detach()


def block_weights(structure: Structure, model: nn.Module, block: str) -> Weights:
    """q, k, v, attention output and FFN projections of a backbone block, wherever its structure keeps them."""
    weights: Weights = {role: _pair(_linear(structure, model, block, role)) for role in ("ffn_in", "ffn_out")}
    if structure.attention_kind == "separate":
        for role in ("query", "key", "value", "attention_out"):
            weights[role] = _pair(_linear(structure, model, block, role))
        return weights
    fused = base_of(structure.submodule(model, block, structure.qkv))
    out: nn.Linear
    if isinstance(fused, nn.MultiheadAttention):
        if fused.in_proj_weight is not None:
            qkv: tuple[torch.Tensor, ...] = tuple(fused.in_proj_weight.detach().chunk(3))
        else:
            qkv = tuple(getattr(fused, f"{part}_proj_weight").detach() for part in "qkv")
        bias, out = fused.in_proj_bias, fused.out_proj  # nn.MultiheadAttention reads out_proj's weight itself
    elif isinstance(fused, nn.Linear):
        qkv, bias, out = (
            tuple(fused.weight.detach().chunk(3)),
            fused.bias,
            _linear(structure, model, block, "attention_out"),
        )
    else:
        raise ConfigError(f"lst: {block}.{structure.qkv} is a {type(fused).__name__}, not a fused q/k/v projection")
    biases = (None, None, None) if bias is None else tuple(bias.detach().chunk(3))
    for role, weight, part_bias in zip(("query", "key", "value"), qkv, biases):
        weights[role] = (weight, part_bias)
    weights["attention_out"] = _pair(out)
    return weights


def head_count(structure: Structure, model: nn.Module, block: str) -> int:
    attention = base_of(structure.submodule(model, block, structure.attention))
    for name in HEAD_COUNT_NAMES:
        if isinstance(getattr(attention, name, None), int):
            return getattr(attention, name)
    raise ConfigError(
        f"lst: {type(attention).__name__} at {block}.{structure.attention} has none of {', '.join(HEAD_COUNT_NAMES)}; "
        f"give the side blocks' head count with num_heads=..."
    )


def _largest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest scores, in their original order (structured pruning keeps the order)."""
    return scores.topk(count).indices.sort().values


def _copy_pruned(linear: nn.Linear, pair: tuple[torch.Tensor, torch.Tensor | None], rows, columns) -> None:
    weight, bias = pair
    linear.weight.copy_(weight[rows][:, columns])
    if bias is None:
        nn.init.zeros_(linear.bias)
    else:
        linear.bias.copy_(bias[rows])


@torch.no_grad()
def prune_into(side_blocks: list[SideBlock], backbone: list[Weights], heads: int) -> None:
    """Copy each backbone block's weights into its side block, keeping the channels of largest L1 norm: one
    set of residual channels for every block (they share the residual stream), per head its own channels
    (the same for q, k, v and the output projection), and the MLP units."""
    width, inner = side_blocks[0].ffn_norm.normalized_shape[0], side_blocks[0].query.out_features
    residual = sum(
        sum(w[role][0].abs().sum(0) for role in ("query", "key", "value", "ffn_in"))
        + w["attention_out"][0].abs().sum(1)
        + w["ffn_out"][0].abs().sum(1)
        for w in backbone
    )
    kept = _largest(cast(torch.Tensor, residual), width)
    for side, w in zip(side_blocks, backbone):
        backbone_head = w["query"][0].shape[0] // heads
        channels = sum(w[role][0][:, kept].abs().sum(1) for role in ("query", "key", "value"))
        channels = channels + w["attention_out"][0][kept].abs().sum(0)
        per_head = [
            head * backbone_head + _largest(channels[head * backbone_head : (head + 1) * backbone_head], inner // heads)
            for head in range(heads)
        ]
        attention = torch.cat(per_head)
        for role in ("query", "key", "value"):
            _copy_pruned(getattr(side, role), w[role], attention, kept)
        _copy_pruned(side.attention_out, w["attention_out"], kept, attention)
        units = _largest(
            w["ffn_in"][0][:, kept].abs().sum(1) + w["ffn_out"][0][kept].abs().sum(0), side.ffn_in.out_features
        )
        _copy_pruned(side.ffn_in, w["ffn_in"], units, kept)
        _copy_pruned(side.ffn_out, w["ffn_out"], kept, units)


@register_method("lst", LstConfig, needs_structure=True)
def inject_lst(context: InjectionContext, config: LstConfig) -> None:
    structure, model = context.require_structure(), context.model
    blocks = structure.block_names(model)
    if len({name.rpartition(".")[0] for name in blocks}) > 1:
        raise ConfigError(
            f"lst: the blocks of {type(model).__name__} lie in several stacks (e.g. encoder and decoder); the side "
            f"network runs beside one stack of blocks and replaces the last one's output"
        )
    selected = context.block_names()
    ladders = [blocks.index(name) for name in selected]
    backbone = [block_weights(structure, model, name) for name in selected]
    heads = config.num_heads or head_count(structure, model, blocks[0])
    dim, inner = backbone[0]["ffn_out"][0].shape[0], backbone[0]["query"][0].shape[0]
    if inner % heads:
        raise ConfigError(f"lst: num_heads={heads} does not divide the backbone's attention width {inner}")
    shape = (heads, config.narrow(inner // heads), config.narrow(backbone[0]["ffn_in"][0].shape[0]))
    reference = backbone[0]["ffn_out"][0]
    network = SideNetwork(dim, config.narrow(dim), shape, ladders, float(config.gate_temperature))
    if config.init == "pruned":
        prune_into(list(cast(list[SideBlock], network.blocks)), backbone, heads)
    root = getattr(model, ROOT_NAME, None)
    if root is None:
        attention = base_of(structure.submodule(model, blocks[0], structure.attention))
        sequence_first = not structure.is_batch_first(model.get_submodule(blocks[0]), attention)
        root = LadderSideNetworks([model.get_submodule(name) for name in blocks], sequence_first)
        setattr(model, ROOT_NAME, root)
    root.side_network[context.adapter_name] = network.to(reference.device, reference.dtype)
