"""Where the blocks, attention and FFN of a backbone are.

Methods that insert new computation at a place in the network (prefix, vpt, loreft,
bottleneck adapters, AdaptFormer) and the default targets of the others read a
:class:`Structure`. Paths are relative to each block; ``blocks`` is a regular expression
over full module names that matches each transformer block. zoo ships descriptions of
a generic HF BERT-style encoder and a timm ViT; domain packages register their own with
:func:`register_structure`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from zoo.peft.config import ConfigError

# Roles a method may name as its default targets (``register_method(default_targets=...)``); all
# but "block" are fields of Structure. "block" means every module inside the blocks.
ROLES = ("query", "key", "value", "attention_out", "ffn_in", "ffn_out", "block")
BLOCK = "block"
TOWERS = ("image", "text")
"""Keys of :attr:`Structure.embeddings`: the encoders whose pooled embedding a structure can point to."""


@dataclass(frozen=True)
class Structure:
    name: str
    blocks: str
    """Regex (full match) over module names selecting every transformer block, in order."""
    attention: str
    """The self-attention module of a block."""
    attention_kind: str
    """How attention computes q, k, v: ``"separate"`` (q/k/v Linears, HF style), ``"fused_qkv"``
    (one Linear producing q, k, v, timm style) or ``"mha"`` (``nn.MultiheadAttention``)."""
    attention_out: str
    """Output projection of attention (its output is added to the residual stream)."""
    ffn_in: str
    """First Linear of the feed-forward network."""
    ffn_out: str
    """Last Linear of the feed-forward network."""
    query: str | None = None
    key: str | None = None
    value: str | None = None
    qkv: str | None = None
    """Fused q/k/v projection (``fused_qkv``) or the ``nn.MultiheadAttention`` (``mha``)."""
    heads: tuple[str, ...] = ("classifier", "head", "score", "fc")
    """Names of task-head modules, tried in order, matched as the last name segment of a
    module outside the blocks."""
    cls_tokens: int = 1
    """Leading special tokens (e.g. [CLS]) that visual prompts are inserted after."""
    batch_first: bool | None = None
    """Whether blocks take (batch, tokens, dim); False for sequence-first layers ("Time x
    Batch x Channel"). None: read it off torch's own modules, else batch-first. Methods that index
    token positions (vpt, loreft positions) need to know."""
    target_patterns: dict[str, str] = field(default_factory=dict)
    """Per role, a regex (relative to a block) used for default targets instead of the role's path,
    where a role has more than one module per block (e.g. self- and cross-attention)."""
    embeddings: dict[str, str] = field(default_factory=dict)
    """Per tower (:data:`TOWERS`), a regex (full match over module names) of the module whose output is that
    tower's pooled embedding, one row per input: where feature adapters (clip_adapter) go. Empty where the
    backbone pools in code, so that no module returns the embedding."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.embeddings) - set(TOWERS))
        if unknown:
            raise ValueError(f"structure {self.name!r}: unknown embedding tower(s) {unknown}; towers are {TOWERS}")

    # -- helpers -----------------------------------------------------------------
    def block_names(self, model: nn.Module) -> list[str]:
        return self.blocks_among(n for n, _ in model.named_modules())

    def blocks_among(self, module_names: Iterable[str]) -> list[str]:
        """The names of blocks among ``module_names`` (a model's, in order)."""
        regex = re.compile(self.blocks)
        return [n for n in module_names if n and regex.fullmatch(n) and "zoo_" not in n]

    def submodule(self, model: nn.Module, block: str, relative: str | None) -> nn.Module:
        if relative is None:
            raise ConfigError(f"structure {self.name!r} has no such part in block {block!r}")
        return model.get_submodule(f"{block}.{relative}")

    def matches(self, model: nn.Module) -> bool:
        blocks = self.block_names(model)
        if not blocks:
            return False
        parts = [self.attention, self.attention_out, self.ffn_in, self.ffn_out]
        parts += [p for p in (self.query, self.key, self.value, self.qkv) if p]
        try:
            for part in parts:
                model.get_submodule(f"{blocks[0]}.{part}")
        except AttributeError:
            return False
        return True

    def targets_for(self, roles: tuple[str, ...]) -> list[str] | str | None:
        """Default ``target_modules`` for the roles a method registered (see :data:`ROLES`)."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown structure role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")
        if not roles:
            return None
        if BLOCK in roles:
            return rf"{self.blocks}\..*"
        if self.attention_kind == "separate" or self.target_patterns:
            # One regex over full names: each role's path in the block, or the structure's own
            # pattern for it (T5's also reaches the decoder's cross-attention).
            parts = [self.target_patterns.get(role) or re.escape(getattr(self, role)) for role in roles]
            return rf"{self.blocks}\.(" + "|".join(parts) + ")"
        # q, k and v are slices of one fused projection (timm's qkv, nn.MultiheadAttention).
        slices = [role[0] for role in ("query", "key", "value") if role in roles]
        fused = [f"{self.qkv}[{','.join(slices)}]"] if slices else []
        return fused + [getattr(self, role) for role in roles if role not in ("query", "key", "value")]

    def is_batch_first(self, block: nn.Module, attention: nn.Module) -> bool:
        if self.batch_first is not None:
            return self.batch_first
        if isinstance(block, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
            return block.self_attn.batch_first
        if isinstance(attention, nn.MultiheadAttention):
            return attention.batch_first
        return True

    def head_names(self, model: nn.Module) -> list[str]:
        """The task head: the first of ``heads`` found outside the blocks."""
        regex = re.compile(self.blocks + r"(\..*)?")
        for head in self.heads:
            for name, module in model.named_modules():
                outside_blocks = not regex.fullmatch(name) and "zoo_" not in name
                has_parameters = next(module.parameters(), None) is not None
                if name and name.rsplit(".", 1)[-1] == head and outside_blocks and has_parameters:
                    return [name]
        return []


_STRUCTURES: dict[str, Structure] = {}


def register_structure(structure: Structure) -> Structure:
    if structure.name in _STRUCTURES:
        raise ValueError(f"structure {structure.name!r} is already registered")
    _STRUCTURES[structure.name] = structure
    return structure


def list_structures() -> list[str]:
    return list(_STRUCTURES)


def get_structure(name: str) -> Structure:
    if name not in _STRUCTURES:
        raise ConfigError(f"unknown structure {name!r}; known: {', '.join(_STRUCTURES)}")
    return _STRUCTURES[name]


def detect_structure(model: nn.Module) -> Structure | None:
    """The first registered structure that fits ``model``, or None."""
    for structure in reversed(list(_STRUCTURES.values())):  # later (more specific) registrations win
        if structure.matches(model):
            return structure
    return None


BERT_STYLE = register_structure(
    Structure(
        name="hf-bert",
        blocks=r"(.*\.)?encoder\.layer\.\d+",
        attention="attention.self",
        attention_kind="separate",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        attention_out="attention.output.dense",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        heads=("classifier", "score", "qa_outputs", "head"),
        # HF's BertFor* models have a pooler exactly when their head reads it (sequence classification, multiple
        # choice); zoo's own BERT-style backbones pool in code, so nothing matches there.
        embeddings={"text": r"(.*\.)?bert\.pooler"},
    )
)

VIT_STYLE = register_structure(
    Structure(
        name="timm-vit",
        blocks=r"(.*\.)?blocks\.\d+",
        attention="attn",
        attention_kind="fused_qkv",
        qkv="attn.qkv",
        attention_out="attn.proj",
        ffn_in="mlp.fc1",
        ffn_out="mlp.fc2",
        heads=("head",),
        # forward_head calls fc_norm (an Identity, or the LayerNorm of average pooling) on the pooled tokens;
        # its output is what the head reads, in timm's classifiers and in zoo's vision backbones alike.
        embeddings={"image": r"(.*\.)?fc_norm"},
    )
)
