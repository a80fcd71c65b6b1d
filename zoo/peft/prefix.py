"""Prefix tuning (Li and Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation", arXiv:2101.00190).

Every attention layer i gets P trainable key and value vectors that are prepended to the
keys and values its tokens compute; queries attend to [prefix; tokens]:

    head_i = softmax(q [K_prefix,i; K]^T / sqrt(d_head)) [V_prefix,i; V]

The attention mask is extended so that the prefixes are always attended. Trainable: the
prefixes (plus ``modules_to_save``). The model does not start equal to the base.

Storage and file format follow HF PEFT (``PrefixTuningConfig`` without projection): one
tensor ``prompt_embeddings`` of shape (P, num_layers * 2 * hidden); viewed as
(P, num_layers * 2, hidden), layer i's keys are ``[:, 2i]`` and its values ``[:, 2i + 1]``.
An adapter saved here loads with ``peft.PeftModel.from_pretrained`` and vice versa.

How the prefix gets in: HF attention modules take a key/value cache (``past_key_values`` in
transformers 4.5x, ``cache`` in 5.x) and call ``cache.update(k, v)``; a forward pre-hook passes a stand-in cache that returns
[prefix; k] and [prefix; v], and extends the attention mask. Attention modules that take
no cache (timm's ``Attention``, torch's ``nn.MultiheadAttention`` as in open_clip, and those
domain packages register) get an equivalent forward that
concatenates the prefixes, restored on unload; see :mod:`zoo.peft.prefix_attention`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, cast

import torch
from torch import nn

from zoo.peft.config import ConfigError, MethodConfig, option, require_int_positive
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import AdapterModule
from zoo.peft.mixed import RowGroup, RowGroups, in_row_order
from zoo.peft.prefix_attention import (
    join_prefix,
    prefix_forward,
    prepend_attended,
    row_splitter,
    supported,
    supported_rows,
    takes_row_prefixes,
)
from zoo.peft.registry import register_method
from zoo.peft.targeting import base_of

ROOT_NAME = "zoo_prefix"
PEFT_KEY = "prompt_embeddings"
ZOO_KEY = f"base_model.{ROOT_NAME}.prompt_embeddings"
# What HF attention modules call their key/value cache argument: ``past_key_values`` up to
# transformers 4.57, ``cache`` from 5.0 (``past_key_value`` before 4.56).
CACHE_ARGUMENTS = ("past_key_values", "cache", "past_key_value")
# What HF embedding modules call the offset of their first position id (4.x, 5.x).
POSITION_OFFSET_ARGUMENTS = ("past_key_values_length", "cache_length")


def _first_parameter(parameters, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in parameters), None)


class PrefixTuningConfig(MethodConfig):
    num_virtual_tokens: int = option(20, help="Number of prefix key/value vectors P per attention layer.")
    prefix_projection: bool = option(
        False, help="Reparameterise prefixes with an MLP (HF PEFT); only False is supported."
    )

    def check(self) -> None:
        super().check()
        require_int_positive(self, "num_virtual_tokens")
        if self.prefix_projection is not False:
            raise ConfigError(
                f"prefix: prefix_projection={self.prefix_projection!r} is not supported; only False "
                f"(prefixes trained directly, as HF PEFT's default) is allowed"
            )
        if self.target_modules is not None:
            raise ConfigError(
                f"prefix: target_modules={self.target_modules!r} is not used; prefixes go into every attention "
                f"layer the structure describes; leave it unset"
            )


class _PrefixKeyValues:
    """Stands in for a transformers key/value cache: ``update`` returns [prefix; keys], [prefix; values]."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.key, self.value = key, value  # (P, hidden)

    def update(self, key_states, value_states, layer_idx=None, *_, **__):
        return join_prefix(self.key, key_states), join_prefix(self.value, value_states)


class PrefixTuning(AdapterModule):
    """All layers' prefixes of every adapter, attached to the model root; hooks put them in."""

    adapter_groups = ("prompt_embeddings",)
    adapter_settings = ("num_virtual_tokens", "prefix_scales")
    mixes_rows = True

    def __init__(self, model: nn.Module, attentions: list[nn.Module], hidden: int) -> None:
        super().__init__()
        self.prompt_embeddings = nn.ParameterDict()
        self.num_virtual_tokens: dict[str, int] = {}
        self.prefix_scales: dict[str, Callable[[int], torch.Tensor]] = {}
        """Per adapter that has one (unipelt): ``scale(index)``, one factor per row of the current call of
        layer ``index``, by which its prefix keys and values are multiplied (each row gets its own)."""
        self.num_layers, self.hidden = len(attentions), hidden
        self._handles: list = []
        self._patched: list[nn.Module] = []
        self._forwards: list[Callable] = []  # the prefix-aware forward of each patched attention
        try:
            for index, attention in enumerate(attentions):
                self._attach(index, attention)
        except ConfigError:
            self.remove_hooks()
            raise
        if not self._patched:
            # HF PEFT runs the model with a P-long cache, so BERT-style embeddings number the tokens
            # from P (position_ids = P .. P+T-1). Reproduce that shift so outputs equal peft's.
            for name, module in model.named_modules():
                offset = _first_parameter(inspect.signature(module.forward).parameters, POSITION_OFFSET_ARGUMENTS)
                if "zoo_" not in name and offset is not None:
                    hook = functools.partial(self._position_hook, offset)
                    self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _attach(self, index: int, attention: nn.Module) -> None:
        parameters = inspect.signature(attention.forward).parameters
        cache_argument = _first_parameter(parameters, CACHE_ARGUMENTS)
        if cache_argument is not None and "attention_mask" in parameters:
            names = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            mask_index = names.index("attention_mask") if "attention_mask" in names else None
            hook = functools.partial(self._cache_hook, index, mask_index, cache_argument)
            self._handles.append(attention.register_forward_pre_hook(hook, with_kwargs=True))
            return
        # The module itself, under any wrapper (LoRA on nn.MultiheadAttention calls it with its own weight).
        attention = base_of(attention)
        forward = prefix_forward(attention)
        if forward is None:
            raise ConfigError(
                f"prefix: cannot insert prefixes into {type(attention).__name__}: it is neither an HF attention "
                f"taking attention_mask and a key/value cache ({' or '.join(CACHE_ARGUMENTS)}) nor one of {supported()}"
            )
        attention.forward = functools.partial(self._attend, forward, index, attention)
        self._patched.append(attention)
        self._forwards.append(forward)

    def add_adapter(self, name: str, config: PrefixTuningConfig, reference: torch.Tensor) -> None:
        shape = (config.num_virtual_tokens, self.num_layers * 2 * self.hidden)
        # N(0, 1), as HF PEFT's nn.Embedding initialises its prompt table.
        self.prompt_embeddings[name] = nn.Parameter(torch.randn(shape, device=reference.device, dtype=reference.dtype))
        self.num_virtual_tokens[name] = config.num_virtual_tokens

    def layer_prefix(self, name: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (each (P, hidden)) of layer ``index``; (batch, P, hidden) each, one per row, for
        an adapter with a scale in ``prefix_scales``."""
        table = self.prompt_embeddings[name].view(self.num_virtual_tokens[name], self.num_layers * 2, self.hidden)
        keys, values = table[:, 2 * index], table[:, 2 * index + 1]
        scale = self.prefix_scales.get(name)
        if scale is None:
            return keys, values
        factor = scale(index)[:, None, None]
        return factor * keys, factor * values

    def current_prefix(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keys and values of layer ``index`` for the active adapter (in a mixed batch: the adapter of
        the rows of this call, see ``_attend``); None when there is none."""
        name = self.active if self.row_groups is None else self.row_groups.single(self.num_virtual_tokens)
        return None if name is None else self.layer_prefix(name, index)

    # -- mixed batches ------------------------------------------------------------
    def mixed_refusal(self, names: set[str | None]) -> str | None:
        used = names & set(self.num_virtual_tokens)
        if not used:
            return None
        unsplit = [type(a).__name__ for a, f in zip(self._patched, self._forwards) if row_splitter(f) is None]
        if unsplit:
            return f"zoo splits attention calls by rows for {supported_rows()}, not for {unsplit[0]}"
        counts = {self.num_virtual_tokens[n] if n is not None and n in used else 0 for n in names}
        if not self._patched and len(counts) > 1:
            return (
                f"on HF attention a prefix of P tokens also numbers the positions from P, and the embeddings take one "
                f"offset for the whole batch: every row must use a prefix adapter, all with the same "
                f"num_virtual_tokens (these rows have {sorted(counts)}; 0: other adapters or None)"
            )
        return None

    def _attend(self, forward, index, attention, *args, **kwargs):
        """The patched attention forward. In a mixed batch whose rows use different prefixes (or none),
        the call is split by adapter, each part run with its rows' prefix."""
        groups = self.row_groups
        if groups is None or len({n if n in self.num_virtual_tokens else None for n in groups.names}) == 1:
            return forward(self, index, attention, *args, **kwargs)

        def call(part_args: tuple, part_kwargs: dict):  # one adapter's rows: current_prefix finds it
            return forward(self, index, attention, *part_args, **part_kwargs)

        split = cast(Callable, row_splitter(forward))  # mixed_refusal made sure there is one
        return split(attention, groups, self.num_virtual_tokens, call, args, kwargs, self)

    def _row_prefix(self, index: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's keys and values of layer ``index``, (batch, P, hidden) each, for HF attention in a
        mixed batch (every row a prefix adapter with the same P, see mixed_refusal)."""
        groups = cast("RowGroups", self.row_groups)

        def rows_prefix(group: RowGroup) -> torch.Tensor:
            keys, values = self.layer_prefix(cast(str, group.name), index)
            return torch.stack([keys, values]).unsqueeze(1).expand(-1, len(group.rows), -1, -1)

        parts = groups.run(self.num_virtual_tokens, hidden.shape[0], hidden.device, rows_prefix, self)
        keys_and_values = in_row_order(parts, dim=1)
        return keys_and_values[0], keys_and_values[1]

    # -- HF attention -------------------------------------------------------------
    def _cache_hook(self, index, mask_index, cache_argument, module, args, kwargs):
        name = self._batch_adapter()
        if name is None:
            return None
        if any(kwargs.get(argument) is not None for argument in CACHE_ARGUMENTS):
            raise RuntimeError(
                "prefix tuning supplies the attention's past keys/values itself; call the model without a cache (use_cache=False)"
            )
        if self.row_groups is None:
            kwargs[cache_argument] = _PrefixKeyValues(*self.layer_prefix(name, index))
        else:
            hidden = args[0] if args else kwargs["hidden_states"]
            kwargs[cache_argument] = _PrefixKeyValues(*self._row_prefix(index, hidden))
        count = self.num_virtual_tokens[name]
        if "attention_mask" in kwargs or mask_index is None or len(args) <= mask_index:
            kwargs["attention_mask"] = prepend_attended(kwargs.get("attention_mask"), count)
        else:
            args = (*args[:mask_index], prepend_attended(args[mask_index], count), *args[mask_index + 1 :])
        return args, kwargs

    def _position_hook(self, offset_argument, module, args, kwargs):
        name = self._batch_adapter()
        if name is not None:
            kwargs[offset_argument] = self.num_virtual_tokens[name]
            return args, kwargs
        return None

    def _batch_adapter(self) -> str | None:
        """The active adapter; in a mixed batch through HF attention, one of the rows' adapters (all
        have the same number of prefix tokens, see mixed_refusal), or None when no row uses one."""
        if self.row_groups is None:
            return self.active
        return next((n for n in self.row_groups.names if n is not None and n in self.num_virtual_tokens), None)

    # -- removal --------------------------------------------------------------------
    def without_row_prefixes(self) -> list[str]:
        """The attention classes here whose prefix-aware forward takes one (P, hidden) prefix for the whole
        batch only (see :func:`~zoo.peft.prefix_attention.takes_row_prefixes`); HF attention takes both."""
        return [type(a).__name__ for a, f in zip(self._patched, self._forwards) if not takes_row_prefixes(f)]

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for attention in self._patched:
            attention.__dict__.pop("forward", None)
        self._patched.clear()
        self._forwards.clear()

    def unwrap(self) -> nn.Module | None:
        return None


def _hidden_size(structure, model: nn.Module, block: str) -> int:
    if structure.attention_kind == "separate":
        return cast(nn.Linear, base_of(structure.submodule(model, block, structure.key))).out_features
    if structure.attention_kind == "fused_qkv":
        return cast(nn.Linear, base_of(structure.submodule(model, block, structure.qkv))).out_features // 3
    if structure.attention_kind == "mha":
        return cast(nn.MultiheadAttention, base_of(structure.submodule(model, block, structure.qkv))).embed_dim
    raise ConfigError(
        f"prefix: attention of kind {structure.attention_kind!r} is not supported (separate, fused_qkv or mha)"
    )


def _task_type(model: nn.Module) -> str | None:
    suffixes = {
        "ForSequenceClassification": "SEQ_CLS",
        "ForTokenClassification": "TOKEN_CLS",
        "ForQuestionAnswering": "QUESTION_ANS",
    }
    for suffix, task in suffixes.items():
        if type(model).__name__.endswith(suffix):
            return task
    takes_cache = _first_parameter(inspect.signature(model.forward).parameters, CACHE_ARGUMENTS) is not None
    return "FEATURE_EXTRACTION" if takes_cache else None


def prefix_to_peft(config: PrefixTuningConfig, model: nn.Module, adapter_name: str) -> dict | None:
    hf_config = getattr(model, "config", None)
    root = getattr(model, ROOT_NAME, None)
    if hf_config is None or not hasattr(hf_config, "num_attention_heads") or root is None or root._patched:
        return None  # peft's prefix tuning runs HF transformers models only
    task = _task_type(model)
    if task is None:
        return None
    return {
        "task_type": task,
        "num_virtual_tokens": config.num_virtual_tokens,
        "token_dim": root.hidden,
        "num_layers": root.num_layers,
        "num_attention_heads": hf_config.num_attention_heads,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": root.hidden,
        "prefix_projection": False,
        "modules_to_save": config.modules_to_save or None,
        "inference_mode": True,
        "base_model_name_or_path": None,
        "revision": None,
    }


def prefix_from_peft(peft_config: dict) -> dict:
    if peft_config.get("prefix_projection"):
        raise ConfigError("peft adapter uses prefix_projection=True, which zoo does not support; allowed: False")
    if peft_config.get("num_transformer_submodules", 1) not in (1, None):
        raise ConfigError(
            f"peft adapter has num_transformer_submodules={peft_config['num_transformer_submodules']!r} "
            f"(encoder-decoder); zoo's prefix tuning supports 1"
        )
    heads = list(dict.fromkeys(peft_config.get("modules_to_save") or []))
    return {"num_virtual_tokens": peft_config["num_virtual_tokens"], "modules_to_save": heads}


def export_keys(tensors: dict) -> dict:
    return {PEFT_KEY if key == ZOO_KEY else key: value for key, value in tensors.items()}


def import_keys(tensors: dict) -> dict:
    return {ZOO_KEY if key == PEFT_KEY else key: value for key, value in tensors.items()}


@register_method(
    "prefix",
    PrefixTuningConfig,
    needs_structure=True,
    peft_type="PREFIX_TUNING",
    to_peft=prefix_to_peft,
    from_peft=prefix_from_peft,
    peft_key_prefix="base_model.",
    export_keys=export_keys,
    import_keys=import_keys,
)
def inject_prefix(context: InjectionContext, config: PrefixTuningConfig) -> None:
    structure = context.require_structure()
    model = context.model
    blocks = context.block_names(selectable=False)
    if len({name.rpartition(".")[0] for name in blocks}) > 1:
        raise ConfigError(
            f"prefix: the blocks of {type(model).__name__} lie in several stacks (e.g. encoder and decoder); zoo's "
            f"prefix tuning supports one stack (HF PEFT's num_transformer_submodules=1)"
        )
    sizes = {_hidden_size(structure, model, block) for block in blocks}
    if len(sizes) != 1:
        raise ConfigError(
            f"prefix: attention layers differ in width ({sorted(sizes)}); one prefix table needs equal widths"
        )
    root = getattr(model, ROOT_NAME, None)
    if root is None:
        attentions = [structure.submodule(model, block, structure.attention) for block in blocks]
        root = PrefixTuning(model, attentions, sizes.pop())
        setattr(model, ROOT_NAME, root)
    reference = next(p for p in model.parameters() if p.is_floating_point())
    root.add_adapter(context.adapter_name, config, reference)
