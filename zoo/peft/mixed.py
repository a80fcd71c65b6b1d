"""Mixed-adapter batches: one forward pass whose rows each use their own adapter.

>>> with zp.mixed(model, ["sst2", "mnli", None, "sst2"]):   # one name per row; None: the base model
...     logits = model(batch)

Row i is computed exactly as ``set_active_adapter(model, names[i])`` (``disabled(model)`` for
None) would compute it alone. Each adapted layer groups the rows by adapter: it computes its
base output for the whole batch once, then replaces the rows of each adapter it holds by what
that adapter makes of them (LoRA adds ``B A x`` to them, (IA)^3 rescales them, ...); the rows of
adapters it does not hold keep the base output, which is what those adapters compute there.
LoRA and DoRA on a Linear do better where gradients are off: each row gathers its own adapter's
stacked factors and the layer runs two batched products for the whole batch (zoo.peft.stacked_rows).
Modules whose adapted computation is a whole call (``nn.MultiheadAttention`` called with an
adapted ``in_proj_weight``, attention over a prefix) are called once per adapter on its rows,
and the results put back in row order. A layer that calls inner adapted layers on some rows
does so in a view narrowed to those rows (:meth:`RowGroups.narrowed`), so wrappers nest.

Task heads (``modules_to_save``) are per adapter too: each row goes through its adapter's copy
of the head (None: the original). Every copy has the original head's shape, so the output is
one tensor, row i from adapter ``names[i]``.

Every method but ``full`` mixes, with rows of None and of other adapters (of any method), except
two that change the sequence itself: vpt rows must all use vpt adapters with the same
``num_prompts`` (one batch holds sequences of one length), and prefix rows on HF attention must
all use prefix adapters with the same ``num_virtual_tokens`` (the embeddings number positions
from the prefix length, one offset for the whole batch); on timm's Attention and
``nn.MultiheadAttention`` prefix rows mix freely. Refused, with the reason: full fine-tuning (it
changed the base weights every row shares), a merged adapter (likewise, until ``unmerge``), and
a module whose class has no per-row path. The model's active adapter and state are untouched.

Rows lie along axis 0 of every adapted layer's input, or axis 1 inside the blocks of a model whose
structure says they take (tokens, batch, ...). A backbone that flattens its batch (a video tower
running every frame as an image) shows layers more rows than there are names, which is refused.
Like ``set_active_adapter``, a mixed block changes the model's modules: one at a time per model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Sequence, TypeVar, cast

import torch
from torch import nn
from torch.func import functional_call

from zoo.peft.config import ConfigError
from zoo.peft.engine import PeftState, _state_or_error
from zoo.peft.layers import AdapterModule
from zoo.peft.registry import get_method
from zoo.peft.targeting import base_of

T = TypeVar("T")


@dataclass(frozen=True)
class RowGroup:
    name: str | None
    """The adapter of these rows; None: rows this module leaves at the base output."""
    rows: list[int]
    index: torch.Tensor
    """``rows`` as a tensor on the device of the layer's input."""


class RowGroups:
    """Which adapter each row of a mixed batch uses, as the layers see it."""

    def __init__(self, names: Sequence[str | None], module_names: dict[int, str], axes: dict[int, int]) -> None:
        self._views: list[list[str | None]] = [list(names)]
        self._groups: list[dict[tuple, Any]] = [{}]  # per view: by_adapter's and slots' answers
        self._module_names = module_names
        self._axes = axes

    def axis(self, module: nn.Module) -> int:
        """The batch axis of the tensors that ``module`` takes and returns: 1 inside the blocks of a
        sequence-first model, which take (tokens, batch, ...), else 0."""
        return self._axes.get(id(module), 0)

    @property
    def names(self) -> list[str | None]:
        """The adapter of each row in view (the whole batch, or the rows a layer narrowed to)."""
        return self._views[-1]

    def where(self, module: nn.Module) -> str:
        """The module's name in the model, for error messages."""
        return self._module_names.get(id(module), type(module).__name__) or "the model root"

    def check(self, size: int, module: nn.Module) -> None:
        if size != len(self.names):
            raise ConfigError(
                f"mixed batch: {len(self.names)} adapter names were given (one per row) but {self.where(module)} "
                f"sees a batch of {size} rows (along axis {self.axis(module)}); pass one name (or None for the base "
                f"model) per row of the batch"
            )

    def by_adapter(self, held: Collection[str], device: torch.device) -> list[RowGroup]:
        """The rows of each adapter in ``held`` that a row uses, then (None, every other row)."""
        row_adapters = tuple(name if name in held else None for name in self.names)
        cached = self._groups[-1].get((row_adapters, device))
        if cached is not None:  # every layer of a kind asks the same: the indices go to the device once
            return cached
        rows: dict[str | None, list[int]] = {}
        for row, name in enumerate(row_adapters):
            rows.setdefault(name, []).append(row)
        ordered = sorted(rows.items(), key=lambda item: item[0] is None)  # adapters first, in row order
        groups = [RowGroup(name, found, torch.tensor(found, device=device)) for name, found in ordered]
        self._groups[-1][(row_adapters, device)] = groups
        return groups

    def slots(self, held: tuple[str, ...], device: torch.device) -> torch.Tensor:
        """Each row's adapter as its index in ``held`` (``len(held)``: an adapter not held, or None)."""
        key = ("slots", held, device)
        cached = self._groups[-1].get(key)
        if cached is None:
            slot_of: dict[str | None, int] = {name: slot for slot, name in enumerate(held)}
            cached = torch.tensor([slot_of.get(name, len(held)) for name in self.names], device=device)
            self._groups[-1][key] = cached
        return cached

    def single(self, held: Collection[str]) -> str | None:
        """The one adapter of ``held`` that the rows in view use (None: none does); for a call made
        for one group of rows (see :meth:`run`)."""
        used = {name for name in self.names if name is not None and name in held}
        if len(used) > 1:
            raise RuntimeError(f"mixed batch: one call was given rows of several adapters ({sorted(used)})")
        return used.pop() if used else None

    @contextlib.contextmanager
    def narrowed(self, rows: list[int]) -> Iterator[None]:
        """Inner layers called in this block see only ``rows`` (of the rows now in view)."""
        names = self.names
        self._views.append([names[row] for row in rows])
        self._groups.append({})
        try:
            yield
        finally:
            self._views.pop()
            self._groups.pop()

    def replace(
        self,
        out: torch.Tensor,
        held: Collection[str],
        row_output: Callable[[str, torch.Tensor], torch.Tensor],
        module: nn.Module,
        dim: int = 0,
        owned: bool = False,
    ) -> torch.Tensor:
        """``out`` (every row's base output, batch along ``dim``) with the rows of each adapter in
        ``held`` replaced by ``row_output(name, index)``, computed in a view of those rows.

        The rows are written into one copy of ``out`` (the base output may be needed by autograd or
        by its producer), or, where ``owned`` says that nothing else holds ``out`` and autograd
        records nothing, into ``out`` itself; then ``row_output`` must read no rows of ``out`` but
        its own, which no other group writes. One copy, not one per adapter: with 8 adapters on
        CPU, copying the whole output for each took 10-22 % of a mixed LoRA forward."""
        self.check(out.shape[dim], module)
        written = None
        for group in self.by_adapter(held, out.device):
            if group.name is None:
                continue
            with self.narrowed(group.rows):
                rows_out = row_output(group.name, group.index)
            if written is None:
                written = out if owned and not torch.is_grad_enabled() else out.clone()
            written.index_copy_(dim, group.index, rows_out.to(out.dtype))
        return out if written is None else written

    def run(
        self, held: Collection[str], size: int, device: torch.device, call: Callable[[RowGroup], T], module: nn.Module
    ) -> list[tuple[RowGroup, T]]:
        """``call(group)`` once per adapter of ``held`` that rows use, and once for the other rows,
        each in a view of its rows."""
        self.check(size, module)
        results = []
        for group in self.by_adapter(held, device):
            with self.narrowed(group.rows):
                results.append((group, call(group)))
        return results


def in_row_order(parts: list[tuple[RowGroup, torch.Tensor]], dim: int = 0) -> torch.Tensor:
    """The groups' outputs (batch along ``dim``) joined back into the batch's row order."""
    order = torch.cat([group.index for group, _ in parts])
    joined = torch.cat([output for _, output in parts], dim=dim)
    return joined.index_select(dim, torch.argsort(order).to(joined.device))


def mixed_forward(layer: Any, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """A wrapped layer's forward in a mixed batch: the base output of every row, then the rows of
    each adapter replaced by ``layer.adapted_rows(name, x_rows, base_rows)``, the method's own
    per-row function (it must compute what the layer's forward computes for those rows alone)."""
    out = layer.base_layer(x, *args, **kwargs)
    groups: RowGroups = layer.row_groups
    axis = groups.axis(layer)
    groups.check(x.shape[axis], layer)
    return groups.replace(
        out,
        layer.adapter_names(),
        lambda name, index: layer.adapted_rows(name, x.index_select(axis, index), out.index_select(axis, index)),
        layer,
        axis,
        owned=_returns_new_tensor(layer.base_layer),
    )


def _returns_new_tensor(module: nn.Module) -> bool:
    """A plain Linear or Conv2d without hooks: its output is a new tensor that only the caller holds."""
    return type(module).forward in (nn.Linear.forward, nn.Conv2d.forward) and not (
        module._forward_hooks or module._forward_pre_hooks
    )


_MULTIHEAD_ARGUMENTS = (
    "query",
    "key",
    "value",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)


def multihead_by_rows(
    attention: nn.MultiheadAttention,
    groups: RowGroups,
    held: Collection[str],
    call: Callable[[str | None, dict[str, Any]], Any],
    args: tuple,
    kwargs: dict,
    module: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An ``nn.MultiheadAttention`` call split by rows: ``call(name, arguments)`` per adapter group
    with the rows' query, key, value and masks, and the output and weights put back in row order."""
    arguments = dict(zip(_MULTIHEAD_ARGUMENTS, args), **kwargs)
    query = arguments["query"]
    if query.dim() != 3:
        raise ConfigError(f"mixed batch: {groups.where(module)} got an unbatched input; mixed batches need a batch")
    batch_dim = 0 if attention.batch_first else 1

    def rows_of(group: RowGroup) -> Any:
        index, sub = group.index, dict(arguments)
        for key in ("query", "key", "value"):
            sub[key] = arguments[key].index_select(batch_dim, index)
        if arguments.get("key_padding_mask") is not None:
            sub["key_padding_mask"] = arguments["key_padding_mask"].index_select(0, index)
        mask = arguments.get("attn_mask")
        if mask is not None and mask.dim() == 3:  # (batch * heads, queries, keys)
            sub["attn_mask"] = mask.unflatten(0, (-1, attention.num_heads)).index_select(0, index).flatten(0, 1)
        return call(group.name, sub)

    results = groups.run(held, query.shape[batch_dim], query.device, rows_of, module)
    output = in_row_order([(group, result[0]) for group, result in results], batch_dim)
    if results[0][1][1] is None:
        return output, None
    return output, in_row_order([(group, result[1]) for group, result in results], 0)


def mixed_multihead_forward(layer: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A wrapper of ``nn.MultiheadAttention`` in a mixed batch: the module is called for the rows of
    each adapter with ``layer.adapted_tensors(name)`` (the tensors its forward swaps in), and
    unchanged for the other rows."""
    return multihead_by_rows(
        cast(nn.MultiheadAttention, base_of(layer.base_layer)),
        layer.row_groups,
        layer.adapter_names(),
        lambda name, arguments: functional_call(
            layer.base_layer, layer.adapted_tensors(name) if name is not None else {}, (), arguments
        ),
        args,
        kwargs,
        layer,
    )


def _checked_names(adapters: Collection[str], adapter_names: Any) -> list[str | None]:
    if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
        raise ConfigError(
            f"adapter_names={adapter_names!r} must be a sequence with one adapter name (or None) per row of the "
            f"batch, e.g. ['a', None, 'b']"
        )
    if not adapter_names:
        raise ConfigError("adapter_names is empty: give one adapter name (or None for the base model) per row")
    for name in adapter_names:
        if name is not None and name not in adapters:
            raise ConfigError(
                f"no adapter named {name!r}; adapters on this model: {', '.join(adapters)} (None: the base model)"
            )
    return list(adapter_names)


def _batch_axes(
    model: nn.Module, state: PeftState, modules: Sequence[tuple[str, nn.Module]], module_names: list[str]
) -> dict[int, int]:
    """Axis 1 for the modules inside blocks that take (tokens, batch, ...), as the structure tells;
    a model without a structure description is taken to be batch-first."""
    structure = state.structure
    if structure is None:
        return {}
    sequence_first = tuple(
        f"{block}."
        for block in structure.blocks_among(module_names)
        if structure.attention is not None
        and not structure.is_batch_first(
            model.get_submodule(block), base_of(structure.submodule(model, block, structure.attention))
        )
    )
    return {id(module): 1 for name, module in modules if sequence_first and name.startswith(sequence_first)}


@contextlib.contextmanager
def mixed(model: nn.Module, adapter_names: Sequence[str | None]) -> Iterator[nn.Module]:
    """``with mixed(model, names): out = model(batch)``: row i of the batch computed with adapter
    ``names[i]`` (None: the base model), each with its own task head; see the module docstring."""
    state = _state_or_error(model)
    names = _checked_names(list(state.adapters), adapter_names)
    for adapter, record in state.adapters.items():
        if get_method(record.method).trains_base:
            raise ConfigError(
                f"adapter {adapter!r} is full fine-tuning: it changed the base weights in place, so every row "
                f"computes with it and rows cannot use other adapters or the base model"
            )
    # one walk over the model per batch (a server enters mixed() for every batch it runs)
    every_module = list(model.named_modules())
    modules = [(name, module) for name, module in every_module if isinstance(module, AdapterModule)]
    used = set(names)
    for module_name, module in modules:
        if module.merged_adapter is not None:
            raise ConfigError(
                f"adapter {module.merged_adapter!r} is merged into the base weights, which every row shares; "
                f"call zoo.peft.unmerge(model) before a mixed batch"
            )
        if module.row_groups is not None:
            raise ConfigError("this model is already running a mixed batch; mixed() blocks do not nest")
        reason = module.mixed_refusal(used)
        if reason is not None:
            methods = sorted({state.adapters[a].method for a in module.adapter_names() if a in state.adapters})
            raise ConfigError(
                f"{'/'.join(methods) or type(module).__name__} at {module_name or 'the model root'} cannot run a "
                f"mixed batch: {reason}"
            )
    groups = RowGroups(
        names,
        {id(module): name for name, module in modules},
        _batch_axes(model, state, modules, [name for name, _ in every_module]),
    )
    for _, module in modules:
        module.row_groups = groups
    try:
        yield model
    finally:
        for _, module in modules:
            module.row_groups = None
