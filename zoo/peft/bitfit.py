"""BitFit: bias-only fine-tuning (Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient
Fine-tuning for Transformer-based Masked Language-models", arXiv:2106.10199).

    b' = b + delta_b    for every bias b of the backbone, delta_b = 0 at init

Trainable: one delta per bias (``bias_delta``), plus the task head (``modules_to_save``).
Training a delta instead of the bias itself lets several named adapters share a backbone and
makes disabling exact. By default every module that owns a ``bias`` (Linear, Conv, LayerNorm,
...) is adapted except the head (the structure's head and ``modules_to_save``);
``target_modules`` restricts that set. An
``nn.MultiheadAttention`` gets ``in_proj_bias_delta`` and ``out_proj_bias_delta``, because it
reads its ``out_proj`` as a weight instead of calling it.

Each adapted module is wrapped; the wrapper calls it with ``bias + delta`` (directly for
Linear, Conv2d and LayerNorm, through ``torch.func.functional_call`` for any other module).
Saved keys read ``base_model.model.<module>.bias_delta``. Merging adds the delta to the bias.
"""

from __future__ import annotations

import re
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from zoo.peft.config import ConfigError, MethodConfig
from zoo.peft.engine import InjectionContext, adapter_modules
from zoo.peft.layers import WrappedLayer
from zoo.peft.mixed import mixed_forward, mixed_multihead_forward
from zoo.peft.registry import register_method
from zoo.peft.targeting import _skip, base_of, innermost_path, match_modules


class BitFitConfig(MethodConfig):
    """``target_modules`` restricts the modules whose bias is trained (None: all but the head)."""


class BitFitLayer(WrappedLayer):
    """Calls the wrapped module with ``bias + bias_delta[active]``."""

    adapter_groups: tuple[str, ...] = ("bias_delta",)
    mixes_rows = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.bias_delta = nn.ParameterDict()

    def add_adapter(self, name: str) -> None:
        self.bias_delta[name] = nn.Parameter(torch.zeros_like(_bias_of(base_of(self.base_layer))))

    def merge(self, name: str) -> None:
        with torch.no_grad():
            self._keep_original("base_layer.bias").add_(self.bias_delta[name])
        self.merged_adapter = name

    def forward(self, x, *args, **kwargs):
        if self.row_groups is not None:
            return mixed_forward(self, x, args, kwargs)
        name = self.active
        base = self.base_layer
        if name is None:
            return base(x, *args, **kwargs)
        bias = _bias_of(base) + self.bias_delta[name]
        forward = type(base).forward
        if not args and not kwargs:
            # The base classes' own forward, with the bias swapped (no functional_call overhead).
            if forward is nn.Linear.forward:
                return F.linear(x, cast(nn.Linear, base).weight, bias)
            if forward is nn.LayerNorm.forward:
                norm = cast(nn.LayerNorm, base)
                return F.layer_norm(x, norm.normalized_shape, norm.weight, bias, norm.eps)
            if forward is nn.Conv2d.forward:
                conv = cast(nn.Conv2d, base)
                return conv._conv_forward(x, conv.weight, bias)
        return functional_call(base, {innermost_path(base, "bias"): bias}, (x, *args), kwargs)

    def adapted_rows(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """One adapter's rows of a mixed batch, ``out`` their base output: Linear, LayerNorm and Conv2d
        add their bias last, so the rows add the delta; another module is called again on them."""
        forward, delta = type(self.base_layer).forward, self.bias_delta[name]
        if forward is nn.Linear.forward or forward is nn.LayerNorm.forward:
            return out + delta
        if forward is nn.Conv2d.forward:
            return out + delta.view(-1, 1, 1)
        bias = _bias_of(self.base_layer) + delta
        return functional_call(self.base_layer, {innermost_path(self.base_layer, "bias"): bias}, (x,), {})


class BitFitMultiheadAttention(BitFitLayer):
    adapter_groups = ("in_proj_bias_delta", "out_proj_bias_delta")

    def __init__(self, base_layer: nn.Module) -> None:
        WrappedLayer.__init__(self, base_layer)
        self.in_proj_bias_delta = nn.ParameterDict()
        self.out_proj_bias_delta = nn.ParameterDict()

    def _biases(self) -> dict[str, torch.Tensor]:
        attention = cast(nn.MultiheadAttention, base_of(self.base_layer))
        found = {"in_proj_bias": attention.in_proj_bias, "out_proj.bias": attention.out_proj.bias}
        return {path: bias for path, bias in found.items() if bias is not None}

    def add_adapter(self, name: str) -> None:
        for path, bias in self._biases().items():
            getattr(self, path.replace(".", "_") + "_delta")[name] = nn.Parameter(torch.zeros_like(bias))

    def merge(self, name: str) -> None:
        with torch.no_grad():
            for path in self._biases():
                self._keep_original(f"base_layer.{path}").add_(getattr(self, path.replace(".", "_") + "_delta")[name])
        self.merged_adapter = name

    def forward(self, *args, **kwargs):
        if self.row_groups is not None:
            return mixed_multihead_forward(self, args, kwargs)
        name = self.active
        if name is None:
            return self.base_layer(*args, **kwargs)
        return functional_call(self.base_layer, self.adapted_tensors(name), args, kwargs)

    def adapted_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """What the module is called with under adapter ``name``: each bias plus its delta."""
        return {
            innermost_path(self.base_layer, path): bias + getattr(self, path.replace(".", "_") + "_delta")[name]
            for path, bias in self._biases().items()
        }


def _bias_of(module: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, module.bias)  # bitfit wraps only modules with a bias tensor


def _adapter_owned(model: nn.Module) -> set[int]:
    """Modules that belong to adapters (their tensors, not the layers they wrap)."""
    owned: set[int] = set()
    for _, module in adapter_modules(model):
        for group in module.adapter_groups:
            container = getattr(module, group)
            if isinstance(container, nn.Module):
                owned.update(id(m) for m in container.modules())
    return owned


def _has_bias(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_bias is not None or module.out_proj.bias is not None
    return module._parameters.get("bias") is not None


def _bias_owners(context: InjectionContext, config: BitFitConfig) -> list[tuple[str, nn.Module]]:
    """(name of the slot to wrap, innermost module) for every bias to adapt, in model order."""
    model = context.model
    # The head is never bias-tuned: it trains whole through modules_to_save (or, with [], not at all).
    heads = list(config.modules_to_save or [])
    heads += context.structure.head_names(model) if context.structure else []
    head_regex = re.compile("|".join(rf"(.*\.)?{re.escape(h)}(\..*)?" for h in heads)) if heads else None
    if config.target_modules is None:
        owned = _adapter_owned(model)
        matched = [
            (n, m)
            for n, m in model.named_modules()
            if n and not _skip(n) and id(m) not in owned and not (head_regex and head_regex.fullmatch(n))
        ]
    else:
        matched = [(t.name, t.module) for t in match_modules(model, config.target_modules)]
    found: dict[int, tuple[str, nn.Module]] = {}
    for name, module in matched:
        if "parametrizations" in name.split("."):
            continue  # a parametrization's own tensors, not a bias of the model
        inner, slot = module, name
        while isinstance(inner, WrappedLayer) and not isinstance(inner, BitFitLayer):
            inner, slot = inner.base_layer, slot + ".base_layer"
        innermost = base_of(inner)
        parent = base_of(model.get_submodule(slot.rpartition(".")[0])) if "." in slot else None
        if isinstance(parent, nn.MultiheadAttention):
            continue  # out_proj is read as a weight by the attention module, which adapts its bias
        if _has_bias(innermost) and id(innermost) not in found:
            found[id(innermost)] = (slot, innermost)
    if not found:
        raise ConfigError(
            f"bitfit: target_modules={config.target_modules!r} selects no module with a bias in "
            f"{type(model).__name__}; name modules that own a bias (Linear, Conv, LayerNorm)"
        )
    return list(found.values())


@register_method("bitfit", BitFitConfig, mergeable=True, starts_at_identity=True)
def inject_bitfit(context: InjectionContext, config: BitFitConfig) -> None:
    for slot, module in _bias_owners(context, config):
        layer_class = BitFitMultiheadAttention if isinstance(module, nn.MultiheadAttention) else BitFitLayer
        layer = context.wrap(slot, layer_class, layer_class)
        layer.add_adapter(context.adapter_name)
