"""LoReFT: low-rank linear subspace representation fine-tuning (Wu et al. 2024, "ReFT:
Representation Finetuning for Language Models", arXiv:2404.03592).

The hidden states h output by chosen blocks are edited at chosen token positions:

    h <- h + R^T (W h + b - R h)

with R in R^{r x d} having orthonormal rows, W in R^{r x d} and b in R^r. pyreft keeps R
orthonormal with ``torch.nn.utils.parametrizations.orthogonal``; for a non-square R that
uses Householder reflectors whose signs are read as ``int()`` of the stored diagonal, so
any weight decay (torch's AdamW decays by default) turns rows of R to zero within a step.
zoo parametrises R as the orthonormalised rows (thin QR, signs fixed) of an unconstrained
matrix instead: the same constraint, robust to weight decay, O(d r^2). Trainable: R, W, b of every
intervened block (plus ``modules_to_save``). LoReFT does not start at identity: at
init W h + b - R h is not zero.

Positions follow pyreft's ``"f<n>+l<m>"``: the first n and the last m tokens of each
sequence. When the model is called with an ``attention_mask`` (captured by a forward
pre-hook on the model), "first" counts from the first and "last" from the last
non-padding token, so both right and left padding work; otherwise from the sequence ends.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from zoo.peft.config import ConfigError, MethodConfig, option, require_int_positive
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import AdapterModule
from zoo.peft.registry import register_method
from zoo.peft.targeting import base_of

CHILD_NAME = "zoo_loreft"
_POSITIONS = re.compile(r"^(?:f(?P<first>\d+))?\+?(?:l(?P<last>\d+))?$")


class LoreftConfig(MethodConfig):
    r: int = option(4, help="Rank of the edited subspace (pyreft's low_rank_dimension).")
    positions: str = option("all", help="Token positions edited: 'all' or pyreft-style 'f<n>+l<m>' (first n, last m).")

    def check(self) -> None:
        super().check()
        require_int_positive(self, "r")
        self.position_span()
        if self.target_modules is not None:
            raise ConfigError(
                f"loreft: target_modules={self.target_modules!r} is not used; choose blocks with layers=[...]"
            )

    def position_span(self) -> tuple[int, int] | None:
        """(first n, last m), or None for every position."""
        if self.positions == "all":
            return None
        match = _POSITIONS.match(self.positions) if isinstance(self.positions, str) and self.positions else None
        if match is None or (match["first"] is None and match["last"] is None):
            raise ConfigError(
                f"loreft: positions={self.positions!r} is not allowed; use 'all' or 'f<n>+l<m>', e.g. 'f3+l3', 'f1', 'l2'"
            )
        return int(match["first"] or 0), int(match["last"] or 0)


def position_mask(
    span: tuple[int, int], batch: int, tokens: int, attention_mask: torch.Tensor | None, device
) -> torch.Tensor:
    """(batch, tokens) bool: True at the first n and last m non-padding tokens of each row."""
    first, last = span
    index = torch.arange(tokens, device=device).unsqueeze(0)
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (batch, tokens):
            raise RuntimeError(
                f"loreft: the model's attention_mask has shape {tuple(attention_mask.shape)} but the intervened block "
                f"sees {batch} x {tokens} tokens, so 'first'/'last' positions cannot be placed; use positions='all'"
            )
        valid = attention_mask.to(device).bool().int()
        start = valid.argmax(dim=1, keepdim=True)
        end = tokens - 1 - valid.flip(1).argmax(dim=1, keepdim=True)
    else:
        start = torch.zeros(batch, 1, dtype=torch.long, device=device)
        end = torch.full((batch, 1), tokens - 1, dtype=torch.long, device=device)
    return ((index >= start) & (index < start + first)) | ((index > end - last) & (index <= end))


class OrthonormalRows(nn.Module):
    """Parametrization: the rows of X (r x d, r <= d) orthonormalised by a thin QR decomposition."""

    def forward(self, matrix: torch.Tensor) -> torch.Tensor:
        q, upper = torch.linalg.qr(matrix.mT)
        signs = torch.sign(torch.diagonal(upper))
        # fix QR's sign freedom so that an already orthonormal X maps to itself
        return (q * torch.where(signs == 0, torch.ones_like(signs), signs)).mT

    def right_inverse(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix


class LoreftIntervention(AdapterModule):
    """R, W, b of each adapter for one block, attached to it; a forward hook edits the block's output."""

    adapter_groups = ("rotate_layer", "learned_source")
    adapter_settings = ("spans",)
    mixes_rows = True

    def __init__(self, model: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.rotate_layer = nn.ModuleDict()
        self.learned_source = nn.ModuleDict()
        self.spans: dict[str, tuple[int, int] | None] = {}
        self._attention_mask: torch.Tensor | None = None
        parameters = [
            n
            for n, p in inspect.signature(model.forward).parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self._mask_index = parameters.index("attention_mask") if "attention_mask" in parameters else None
        self._handles = [
            model.register_forward_pre_hook(self._capture_mask, with_kwargs=True),
            block.register_forward_hook(self._edit),
        ]

    def add_adapter(self, name: str, config: LoreftConfig, dim: int, reference: torch.Tensor) -> None:
        rotate = nn.Linear(dim, config.r, bias=False)
        nn.init.orthogonal_(rotate.weight)
        parametrize.register_parametrization(rotate, "weight", OrthonormalRows())  # R stays orthonormal while training
        self.rotate_layer[name] = rotate.to(reference.device, reference.dtype)
        self.learned_source[name] = nn.Linear(dim, config.r).to(reference.device, reference.dtype)
        self.spans[name] = config.position_span()

    def _capture_mask(self, model, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and self._mask_index is not None and len(args) > self._mask_index:
            mask = args[self._mask_index]
        if mask is None:  # models called with one batch dict (zoo's TaskModel) carry the mask inside it
            mask = next((a["attention_mask"] for a in args if isinstance(a, Mapping) and "attention_mask" in a), None)
        self._attention_mask = mask if torch.is_tensor(mask) and mask.dim() == 2 else None

    def intervene(self, name: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        rotate, source = self.rotate_layer[name], self.learned_source[name]
        edit = (source(hidden) - rotate(hidden)) @ rotate.weight  # R^T (W h + b - R h), h as a row vector
        span = self.spans[name]
        if span is not None:
            batch, tokens = hidden.shape[:2]
            edit = edit * position_mask(span, batch, tokens, attention_mask, hidden.device).unsqueeze(-1).to(edit.dtype)
        return hidden + edit

    def _edit(self, block, args, output):
        name, groups = self.active, self.row_groups
        if name is None and groups is None:
            return None
        hidden, mask = output[0] if isinstance(output, tuple) else output, self._attention_mask
        if groups is not None:  # a mixed batch: each adapter edits its rows (their mask rows place positions)
            axis = groups.axis(self)
            edited = groups.replace(
                hidden,
                self.adapter_names(),
                lambda row_name, index: self.intervene(
                    row_name,
                    hidden.index_select(axis, index),
                    None if mask is None else mask.index_select(0, index.to(mask.device)),
                ),
                self,
                axis,
            )
        else:
            edited = self.intervene(cast(str, name), hidden, mask)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._attention_mask = None

    def unwrap(self) -> nn.Module | None:
        return None


@register_method("loreft", LoreftConfig, needs_structure=True)
def inject_loreft(context: InjectionContext, config: LoreftConfig) -> None:
    structure = context.require_structure()
    blocks = context.block_names()  # those of the `layers` option (every block by default)
    indices = list(range(len(blocks)))
    first_block = blocks[0] if blocks else None
    attention = structure.submodule(context.model, first_block, structure.attention) if first_block else None
    if (
        config.positions != "all"
        and first_block is not None
        and attention is not None
        and not structure.is_batch_first(context.model.get_submodule(first_block), attention)
    ):
        raise ConfigError(
            f"loreft: positions={config.positions!r} needs batch-first blocks, but {type(attention).__name__} takes "
            f"(tokens, batch, dim); use positions='all'"
        )
    reference = next(p for p in context.model.parameters() if p.is_floating_point())
    for index in indices:
        block = context.model.get_submodule(blocks[index])
        ffn_out = base_of(structure.submodule(context.model, blocks[index], structure.ffn_out))
        dim = cast(nn.Linear, ffn_out).out_features  # the block's output projection
        if config.r > dim:
            raise ConfigError(
                f"loreft: r={config.r} is not allowed; R has orthonormal rows, so r must be <= the hidden size {dim}"
            )
        intervention = getattr(block, CHILD_NAME, None)
        if intervention is None:
            intervention = LoreftIntervention(context.model, block)
            setattr(block, CHILD_NAME, intervention)
        intervention.add_adapter(context.adapter_name, config, dim, reference)
