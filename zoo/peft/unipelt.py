"""UniPELT: LoRA, prefix tuning and a bottleneck adapter in every block, each scaled by a learned gate
(Mao et al. 2022, "UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning",
arXiv:2110.07577).

Each sub-method is multiplied by a gate in (0, 1) computed from the tensor it adapts (G_L, G_P and
G_A of the paper's gating, its Figure 1), one value per example, as the authors' code averages it
over the example's tokens:

    G(x)   = mean_t sigmoid(W_G x_t + b_G)                                   W_G: width -> 1
    LoRA:    h   = W x + G_L(x) (lora_alpha / r) B A x            x: the input of query / value
    prefix:  P_K <- G_P(a) P_K,  P_V <- G_P(a) P_V                a: the attention's input
    adapter: h_A = h_F + G_A(h_F) (W_up act(W_down h_F + b_down) + b_up)    h_F: the FFN output

LoRA goes on the query and value projections (each with its own G_L, as in the authors' code; in
a BERT-style block their input is the layer input), prefix tuning into every attention layer, and
the adapter after the FFN output projection only (the ``pfeiffer`` placement of ``adapter``). The
three parts are zoo's own ``lora``, ``prefix`` and ``adapter``, with their options and inits:
B = 0 and W_up = 0, so only the prefix moves the model at the start. The default
``lora_alpha = r`` leaves the LoRA branch scaled by its gate alone, as in the authors' code, where
G_L takes the place of lora_alpha / r. Trainable: A, B, the prefixes, W_down, b_down, W_up, b_up
and W_G, b_G of every gate (plus ``modules_to_save``).

A shut gate (0) removes LoRA's update and the adapter's output exactly. It does not remove the
prefix: G_P = 0 leaves P keys and values of zero, each of which still takes exp(0) of every
softmax (the paper and the authors' code multiply P_K and P_V by G_P). Not mergeable: G_L depends on each example's input, so
G_L B A is no constant update of W (and the prefix and the adapter add computation anyway).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, TypeVar, cast

import torch
from torch import nn

from zoo.peft.adapter import BottleneckAdapter, BottleneckAdapterConfig, inject_adapter_layers
from zoo.peft.config import ConfigError, MethodConfig, option
from zoo.peft.engine import InjectionContext, adapter_modules
from zoo.peft.layers import AdapterModule
from zoo.peft.lora import LoraConfig, LoraLayer, inject_lora_layers
from zoo.peft.prefix import ROOT_NAME, PrefixTuning, PrefixTuningConfig, inject_prefix
from zoo.peft.registry import register_method
from zoo.peft.targeting import base_of
from zoo.strict_model import Number

GATES_ROOT_NAME = "zoo_prefix_gates"
C = TypeVar("C", bound=MethodConfig)


def example_gate(gate: nn.Module, x: torch.Tensor, batch_axis: int) -> torch.Tensor:
    """mean over each example's tokens of sigmoid(W_G x_t + b_G), shaped to broadcast over ``x`` (a 2-D
    ``x`` has no token axis: one value per row)."""
    values = torch.sigmoid(gate(x))
    tokens = tuple(axis for axis in range(x.dim() - 1) if axis != batch_axis)
    return values.mean(dim=tokens, keepdim=True) if tokens else values


def _new_gate(width: int, reference: torch.Tensor) -> nn.Linear:
    return nn.Linear(width, 1).to(reference.device, reference.dtype)


class UniPeltConfig(MethodConfig):
    r: int = option(8, help="Rank of the LoRA update B A on the query and value projections.")
    lora_alpha: Number = option(
        8, help="LoRA's update is multiplied by lora_alpha / r and by its gate; = r: by the gate alone."
    )
    lora_dropout: Number = option(0.0, help="Dropout on the input of LoRA's low-rank branch (not of its gate).")
    num_virtual_tokens: int = option(10, help="Number of prefix key/value vectors P per attention layer.")
    reduction_factor: Number | None = option(
        None, help="Adapter bottleneck = hidden size / reduction_factor (16 when neither this nor size is set)."
    )
    size: str | None = option(
        None, help="Named adapter bottleneck instead of reduction_factor: 'tiny' = 8, 'small' = 64."
    )
    non_linearity: str = option("relu", help="Activation in the adapter's bottleneck: relu, gelu, swish or tanh.")

    def check(self) -> None:
        super().check()
        for part in (self.lora_part, self.prefix_part, self.adapter_part):
            part()  # building a part checks its options

    def lora_part(self) -> LoraConfig:
        options = {"r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout}
        return _part(LoraConfig, target_modules=self.target_modules, **options)

    def prefix_part(self) -> PrefixTuningConfig:
        return _part(PrefixTuningConfig, num_virtual_tokens=self.num_virtual_tokens)

    def adapter_part(self) -> BottleneckAdapterConfig:
        options = {"reduction_factor": self.reduction_factor, "size": self.size, "non_linearity": self.non_linearity}
        return _part(BottleneckAdapterConfig, variant="pfeiffer", **options)


def _part(config_class: type[C], **options: Any) -> C:
    """The config of one part; its errors name unipelt's option (the parts' options have the same names)."""
    try:
        return config_class(modules_to_save=[], **options)
    except ConfigError as error:
        raise ConfigError(f"unipelt: {str(error).removeprefix(config_class.method + ': ')}") from None


class GatedLoraLayer(LoraLayer):
    """LoRA whose update is scaled by G_L of the layer's input, for each adapter with a gate (unipelt);
    plain LoRA adapters may share the layer and stay ungated."""

    adapter_groups = (*LoraLayer.adapter_groups, "lora_gate")
    batch_axis = 0
    stacks_rows = False  # the update is scaled by a gate of the input, which the stacked path does not compute

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_gate = nn.ModuleDict()

    def add_gate(self, name: str, batch_axis: int) -> None:
        base = cast(nn.Linear, self._base())  # unipelt targets nn.Linear only
        self.lora_gate[name] = _new_gate(base.in_features, base.weight)
        self.batch_axis = batch_axis

    def branch_scaling(self, name: str, x: torch.Tensor) -> float | torch.Tensor:
        if name not in self.lora_gate:
            return super().branch_scaling(name, x)
        return self.scaling[name] * example_gate(self.lora_gate[name], x, self.batch_axis)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self.active
        if name is None or name not in self.lora_gate:
            return super().forward(x, *args, **kwargs)
        # Not LoRA's in-place path, which scales by the constant lora_alpha / r.
        return self.adapted_rows(name, x, self.base_layer(x, *args, **kwargs))


class GatedBottleneckAdapter(BottleneckAdapter):
    """A bottleneck adapter whose output is scaled by G_A of the projection's output, for each adapter
    with a gate (unipelt); plain adapters may share the layer and stay ungated."""

    adapter_groups = (*BottleneckAdapter.adapter_groups, "adapter_gate")
    batch_axis = 0

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.adapter_gate = nn.ModuleDict()

    def add_gate(self, name: str, batch_axis: int) -> None:
        base = cast(nn.Linear, base_of(self.base_layer))
        self.adapter_gate[name] = _new_gate(base.out_features, base.weight)
        self.batch_axis = batch_axis

    def adapted_rows(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if name not in self.adapter_gate:
            return super().adapted_rows(name, x, out)
        return out + example_gate(self.adapter_gate[name], out, self.batch_axis) * self.bottleneck(name, out)


class PrefixGates(AdapterModule):
    """G_P of every attention layer, per adapter, attached to the model root. A forward pre-hook on each
    attention computes the gate from the attention's input; the prefix root multiplies that layer's prefix
    keys and values by it (``PrefixTuning.prefix_scales``)."""

    adapter_groups = ("prefix_gate",)
    mixes_rows = True  # rows of other adapters: in a mixed batch no gate is computed (active is None)

    def __init__(self, attentions: list[nn.Module], batch_axes: list[int]) -> None:
        super().__init__()
        self.prefix_gate = nn.ModuleDict()
        self.batch_axes = batch_axes
        self._gates: dict[int, torch.Tensor] = {}
        # prepend: before prefix tuning's own pre-hook on HF attention, which asks for the gate
        self._handles = [
            attention.register_forward_pre_hook(
                functools.partial(self._gate_hook, index), with_kwargs=True, prepend=True
            )
            for index, attention in enumerate(attentions)
        ]

    def add_adapter(self, name: str, width: int, reference: torch.Tensor) -> None:
        self.prefix_gate[name] = nn.ModuleList(_new_gate(width, reference) for _ in self.batch_axes)

    def _gate_hook(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.active
        if name is not None:
            gate = example_gate(
                cast(nn.ModuleList, self.prefix_gate[name])[index],
                _attention_input(args, kwargs),
                self.batch_axes[index],
            )
            self._gates[index] = gate.reshape(-1)

    def mixed_refusal(self, names: set[str | None]) -> str | None:
        if names & set(self.prefix_gate):
            return (
                "its prefix gate is computed from the input of the whole attention call, which a mixed batch does "
                "not split by adapter"
            )
        return None

    def scale(self, index: int) -> torch.Tensor:
        """G_P of layer ``index`` for each example of the attention call under way, (batch,)."""
        gate = self._gates.pop(index, None)  # popped: an activation is not kept past its call
        if gate is None:
            raise RuntimeError(f"unipelt: attention layer {index} was called without its forward hooks; no prefix gate")
        return gate

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def unwrap(self) -> nn.Module | None:
        return None


def _attention_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and torch.is_tensor(args[0]):
        return args[0]
    for key in ("hidden_states", "x", "query"):  # HF, timm and torchaudio, nn.MultiheadAttention
        if torch.is_tensor(kwargs.get(key)):
            return kwargs[key]
    raise RuntimeError("unipelt: an attention call has no tensor first argument (nor hidden_states, x or query)")


def _batch_axis(context: InjectionContext, module_name: str) -> int:
    """1 inside the blocks that the structure says take (tokens, batch, ...), else 0 (as zoo.peft.mixed)."""
    structure, model = context.require_structure(), context.model
    for block in structure.block_names(model):
        if module_name.startswith(block + "."):
            attention = base_of(structure.submodule(model, block, structure.attention))
            return 0 if structure.is_batch_first(model.get_submodule(block), attention) else 1
    return 0


@contextlib.contextmanager
def _part_errors(part: str) -> Iterator[None]:
    """A part's refusal, said as unipelt's."""
    try:
        yield
    except ConfigError as error:
        if str(error).startswith("unipelt"):
            raise
        raise ConfigError(f"unipelt: its {part} does not fit: {error}") from None


def _gated_layers(context: InjectionContext, layer_class: type) -> Iterator[tuple[str, Any]]:
    for name, module in adapter_modules(context.model):
        if isinstance(module, layer_class) and module.has_adapter(context.adapter_name):
            yield name, module


def _inject_lora(context: InjectionContext, config: LoraConfig) -> None:
    for target in context.targets(config, allowed=(nn.Linear, nn.Conv2d, nn.MultiheadAttention)):
        base = base_of(target.module)
        if isinstance(base, nn.MultiheadAttention):
            raise ConfigError(
                f"unipelt: LoRA target {target.name!r} is an nn.MultiheadAttention, whose q and v projections are "
                f"read from its in_proj_weight: LoRA adds its update to that weight, one for the whole batch, which "
                f"unipelt's per-example gate cannot scale; target nn.Linear projections"
            )
        if not isinstance(base, nn.Linear):
            raise ConfigError(
                f"unipelt: LoRA target {target.name!r} is a {type(base).__name__}; its gate reads the features of "
                f"each token of an nn.Linear's input: target nn.Linear projections"
            )
    inject_lora_layers(context, config, linear_class=GatedLoraLayer, mha_class=None)
    for name, layer in _gated_layers(context, GatedLoraLayer):
        layer.add_gate(context.adapter_name, _batch_axis(context, name))


def _inject_prefix(context: InjectionContext, config: PrefixTuningConfig) -> None:
    with _part_errors("prefix tuning"):
        inject_prefix(context, config)
    model, structure = context.model, context.require_structure()
    prefixes = cast(PrefixTuning, getattr(model, ROOT_NAME))
    whole_batch = prefixes.without_row_prefixes()
    if whole_batch:
        raise ConfigError(
            f"unipelt: prefix tuning on {whole_batch[0]} takes one prefix table for the whole batch, and unipelt's "
            f"prefix gate scales each example's prefix (attention forwards registered with row_prefixes=True can)"
        )
    gates = getattr(model, GATES_ROOT_NAME, None)
    if gates is None:
        blocks = context.block_names(selectable=False)
        attentions = [structure.submodule(model, block, structure.attention) for block in blocks]
        gates = PrefixGates(attentions, [_batch_axis(context, f"{block}.{structure.attention}") for block in blocks])
        setattr(model, GATES_ROOT_NAME, gates)
    gates.add_adapter(context.adapter_name, prefixes.hidden, prefixes.prompt_embeddings[context.adapter_name])
    prefixes.prefix_scales[context.adapter_name] = gates.scale


@register_method(
    "unipelt",
    UniPeltConfig,
    needs_structure=True,
    default_targets=("query", "value"),
    merge_refusal="scales its LoRA update by a gate computed from each example's input (a LoRA update folds into "
    "the weight only under a constant scale) and adds prefix and adapter computation, none of which can be folded "
    "into the base weights",
)
def inject_unipelt(context: InjectionContext, config: UniPeltConfig) -> None:
    _inject_lora(context, config.lora_part())
    _inject_prefix(context, config.prefix_part())
    with _part_errors("adapter"):
        inject_adapter_layers(context, config.adapter_part(), layer_class=GatedBottleneckAdapter)
    for name, layer in _gated_layers(context, GatedBottleneckAdapter):
        layer.add_gate(context.adapter_name, _batch_axis(context, name))
