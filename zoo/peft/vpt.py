"""Visual prompt tuning (Jia et al. 2022, "Visual Prompt Tuning", arXiv:2203.12119).

P trainable prompt tokens are inserted after the leading [CLS] token(s) before the first
block (VPT-shallow); with ``deep=True`` every block i gets a fresh set that replaces the
prompt outputs of block i-1 (VPT-deep):

    [x_cls, Z_1, E_1] = L_1([x_cls, P_0, E_0])
    [x_cls, Z_i, E_i] = L_i([x_cls, P_{i-1}, E_{i-1}])     (deep; shallow keeps Z_{i-1})

After the last block the prompt positions are removed, so pooling and the head see the
original sequence. Trainable: the prompts (plus ``modules_to_save``, by default the head).
The model does not start equal to the base: the prompts are attended from the start.

Works on any structure whose blocks take the hidden states first (timm ViT, HF BERT).
On HF models the additive/boolean attention mask each block receives is extended so that
every token attends to the prompts and the prompts attend to what the first token does.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from zoo.peft.config import ConfigError, MethodConfig, option, require_choice, require_int_positive, require_probability
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import AdapterModule
from zoo.peft.mixed import RowGroup, RowGroups, in_row_order
from zoo.peft.registry import register_method
from zoo.peft.targeting import base_of
from zoo.strict_model import Number

ROOT_NAME = "zoo_vpt"
INITS = ("xavier", "normal")


class VptConfig(MethodConfig):
    num_prompts: int = option(10, help="Prompt tokens P inserted after the [CLS] token(s).")
    deep: bool = option(False, help="VPT-deep: fresh prompts before every block (else only before the first).")
    prompt_dropout: Number = option(0.0, help="Dropout on the prompt tokens during training.")
    init: str = option(
        "xavier",
        help="'xavier': uniform(-v, v), v = sqrt(6 / (fan_in + dim)), fan_in = in_channels * kernel area of "
        "the model's first Conv2d (a ViT's patch embedding: 3 * patch area, as in the paper), or dim when "
        "the model has no Conv2d; 'normal': N(0, 0.02).",
    )

    def check(self) -> None:
        super().check()
        require_int_positive(self, "num_prompts")
        require_probability(self, "prompt_dropout")
        require_choice(self, "init", INITS)
        if self.target_modules is not None:
            raise ConfigError(
                f"vpt: target_modules={self.target_modules!r} is not used; prompts go before the blocks; leave it unset"
            )


def insert_attended(mask: torch.Tensor | None, at: int, count: int, tokens: int) -> torch.Tensor | None:
    """Insert ``count`` attended key positions at ``at`` into a mask over ``tokens`` tokens; when the
    mask has a query axis of that length, the new query rows copy the row of token ``max(at-1, 0)``."""
    if mask is None:
        return None
    if not torch.is_tensor(mask) or mask.shape[-1] != tokens:
        raise RuntimeError(
            f"vpt cannot extend an attention mask of {type(mask).__name__} {getattr(mask, 'shape', '')} over {tokens} tokens"
        )
    fill = True if mask.dtype == torch.bool else (0.0 if mask.is_floating_point() else 1)
    mask = torch.cat([mask[..., :at], mask.new_full((*mask.shape[:-1], count), fill), mask[..., at:]], dim=-1)
    if mask.dim() >= 2 and mask.shape[-2] == tokens and tokens > 1:
        row = mask[..., max(at - 1, 0) : max(at - 1, 0) + 1, :]
        mask = torch.cat([mask[..., :at, :], row.expand(*row.shape[:-2], count, -1), mask[..., at:, :]], dim=-2)
    return mask


class VisualPrompts(AdapterModule):
    """Every adapter's prompts, attached to the model root; block hooks insert and strip them."""

    adapter_groups = ("prompt_embeddings",)
    adapter_settings = ("deep", "dropout")
    mixes_rows = True

    def __init__(self, blocks: list[nn.Module], cls_tokens: int) -> None:
        super().__init__()
        self.prompt_embeddings = nn.ParameterDict()
        self.deep: dict[str, bool] = {}
        self.dropout: dict[str, float] = {}
        self.cls_tokens = cls_tokens
        self._handles = [
            block.register_forward_pre_hook(self._make_pre_hook(i), with_kwargs=True) for i, block in enumerate(blocks)
        ]
        self._handles.append(blocks[-1].register_forward_hook(self._strip))

    def add_adapter(
        self, name: str, config: VptConfig, layers: int, dim: int, fan_in: int, reference: torch.Tensor
    ) -> None:
        prompts = torch.empty(
            layers if config.deep else 1, config.num_prompts, dim, device=reference.device, dtype=reference.dtype
        )
        if config.init == "xavier":
            bound = math.sqrt(6.0 / (fan_in + dim))
            nn.init.uniform_(prompts, -bound, bound)
        else:
            nn.init.normal_(prompts, std=0.02)
        self.prompt_embeddings[name] = nn.Parameter(prompts)
        self.deep[name] = config.deep
        self.dropout[name] = config.prompt_dropout

    def _prompts(self, name: str, index: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        prompts = F.dropout(self.prompt_embeddings[name][index], self.dropout[name], self.training)
        return prompts.to(like.dtype).unsqueeze(0).expand(batch, -1, -1)

    def prompt_count(self, name: str | None) -> int:
        """How many prompt tokens the rows of adapter ``name`` get (0: not a vpt adapter of this model)."""
        return self.prompt_embeddings[name].shape[1] if name is not None and name in self.deep else 0

    def mixed_refusal(self, names: set[str | None]) -> str | None:
        counts = {self.prompt_count(n) for n in names}
        if max(counts) and len(counts) > 1:
            return (
                f"its prompts lengthen each row's sequence by num_prompts, and these rows would get "
                f"{sorted(counts)} prompt tokens (0: rows of other adapters or None); one batch holds sequences "
                f"of one length, so mix vpt adapters with the same num_prompts only"
            )
        return None

    def _row_prompts(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """A mixed batch (every row a vpt adapter with the same prompt count): each row's prompts for
        block ``index``; at a later block the rows of a shallow adapter keep what is in the sequence."""
        groups, start = cast("RowGroups", self.row_groups), self.cls_tokens

        def rows_prompts(group: RowGroup) -> torch.Tensor:
            name = cast(str, group.name)
            if index > 0 and not self.deep[name]:
                count = self.prompt_embeddings[name].shape[1]
                return hidden[:, start : start + count].index_select(0, group.index)
            return self._prompts(name, index if self.deep[name] else 0, len(group.rows), hidden)

        return in_row_order(groups.run(self.deep, hidden.shape[0], hidden.device, rows_prompts, self))

    def _make_pre_hook(self, index: int):
        def hook(module, args, kwargs):
            name = self.active
            if self.row_groups is not None:
                if not any(self.prompt_count(n) for n in self.row_groups.names):
                    return None
                hidden, args, kwargs = _take_hidden(args, kwargs)
                prompts, start = self._row_prompts(index, hidden), self.cls_tokens
                after = start + prompts.shape[1] if index > 0 else start
                args = (torch.cat([hidden[:, :start], prompts, hidden[:, after:]], dim=1), *args)
                return _extend_mask(prompts.shape[1], self.cls_tokens, args, kwargs)
            if name is None:
                return None
            if index > 0 and not self.deep[name]:  # shallow: the prompts are already in the sequence
                return _extend_mask(self.prompt_embeddings[name].shape[1], self.cls_tokens, args, kwargs)
            hidden, args, kwargs = _take_hidden(args, kwargs)
            count, start = self.prompt_embeddings[name].shape[1], self.cls_tokens
            prompts = self._prompts(name, index if self.deep[name] else 0, hidden.shape[0], hidden)
            if index == 0:
                hidden = torch.cat([hidden[:, :start], prompts, hidden[:, start:]], dim=1)
            else:  # deep: fresh prompts replace the previous block's prompt outputs
                hidden = torch.cat([hidden[:, :start], prompts, hidden[:, start + count :]], dim=1)
            args = (hidden, *args)
            return _extend_mask(count, self.cls_tokens, args, kwargs)

        return hook

    def _strip(self, module, args, output):
        name = self.active
        if self.row_groups is not None:  # every row has the same prompt count (mixed_refusal)
            name = next((n for n in self.row_groups.names if self.prompt_count(n)), None)
        if name is None:
            return None
        count, start = self.prompt_embeddings[name].shape[1], self.cls_tokens
        first = output[0] if isinstance(output, tuple) else output
        stripped = torch.cat([first[:, :start], first[:, start + count :]], dim=1)
        return (stripped, *output[1:]) if isinstance(output, tuple) else stripped

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def unwrap(self) -> nn.Module | None:
        return None


def _take_hidden(args, kwargs):
    """The hidden states (a block's first argument) and the remaining arguments."""
    if args:
        return args[0], args[1:], kwargs
    for key in ("hidden_states", "x"):
        if key in kwargs:
            return kwargs.pop(key), (), kwargs
    raise RuntimeError("vpt: cannot find the hidden states among the block's arguments")


def _extend_mask(count: int, cls_tokens: int, args: tuple, kwargs: dict):
    """Blocks get the mask over the original tokens; extend it to cover the ``count`` prompts."""
    hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
    if hidden is None:
        raise RuntimeError("vpt: cannot find the hidden states among the block's arguments")
    tokens = hidden.shape[1] - count
    for key in ("attention_mask", "attn_mask"):
        if kwargs.get(key) is not None:
            kwargs[key] = insert_attended(kwargs[key], cls_tokens, count, tokens)
    if len(args) > 1 and torch.is_tensor(args[1]):  # HF encoders pass the mask second, positionally
        args = (args[0], insert_attended(args[1], cls_tokens, count, tokens), *args[2:])
    position = kwargs.get("cache_position")
    if torch.is_tensor(position) and position.shape[-1] == tokens:
        # transformers 4's T5 sizes its relative position bias by cache_position, so it must count the prompts too
        kwargs["cache_position"] = torch.arange(tokens + count, device=position.device)
    if kwargs.get("is_causal"):
        raise RuntimeError("vpt: prompts are inserted into the sequence, which a causal block cannot take")
    return args, kwargs


def _fan_in(model: nn.Module, dim: int) -> int:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and "zoo_" not in name:
            return module.in_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups
    return dim


def _width(structure, model: nn.Module, block: str) -> int:
    return cast(nn.Linear, base_of(structure.submodule(model, block, structure.ffn_out))).out_features


@register_method("vpt", VptConfig, needs_structure=True)
def inject_vpt(context: InjectionContext, config: VptConfig) -> None:
    structure = context.require_structure()
    model = context.model
    blocks = context.block_names(selectable=False)
    if len({name.rpartition(".")[0] for name in blocks}) > 1:
        raise ConfigError(
            f"vpt: the blocks of {type(model).__name__} lie in several stacks (e.g. encoder and decoder); prompts "
            f"are inserted before the first block and removed after the last, so vpt needs one stack of blocks"
        )
    attention = structure.submodule(model, blocks[0], structure.attention)
    if not structure.is_batch_first(model.get_submodule(blocks[0]), attention):
        raise ConfigError(
            f"vpt: the blocks of {type(model).__name__} take (tokens, batch, dim) ({type(attention).__name__}); "
            f"vpt inserts prompts along the token axis of batch-first blocks only"
        )
    dim = _width(structure, model, blocks[0])
    root = getattr(model, ROOT_NAME, None)
    if root is None:
        root = VisualPrompts([model.get_submodule(b) for b in blocks], structure.cls_tokens)
        setattr(model, ROOT_NAME, root)
        root.train(model.training)  # prompt dropout follows the model's mode
    reference = next(p for p in model.parameters() if p.is_floating_point())
    root.add_adapter(context.adapter_name, config, len(blocks), dim, _fan_in(model, dim), reference)
