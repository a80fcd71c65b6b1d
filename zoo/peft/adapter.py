"""Bottleneck adapters: Houlsby (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning
for NLP", arXiv:1902.00751) and Pfeiffer (Pfeiffer et al. 2021, "AdapterFusion:
Non-Destructive Task Composition for Transfer Learning", arXiv:2005.00247).

A serial bottleneck is applied to the output y of a projection, before the block adds it
to the residual stream:

    adapter(y) = y + W_up act(W_down y + b_down) + b_up,   W_down: d -> m,  W_up: m -> d

``variant="houlsby"`` puts one after the attention output projection and one after the
FFN output projection of every block; ``variant="pfeiffer"`` only after the FFN output.
W_up and b_up start at zero, so the adapted model starts equal to the base (W_down as
nn.Linear's default init). Trainable: W_down, b_down, W_up, b_up (plus ``modules_to_save``).
Houlsby et al. also train the layer norms; add them with ``modules_to_save`` if wanted.

Bottleneck size m: ``hidden / reduction_factor`` (default reduction 16, as AdapterHub's
configs), or a named ``size``: ``"tiny"`` = 8, ``"small"`` = 64, whatever the width.
"""

from __future__ import annotations

from typing import Callable, cast

import torch
import torch.nn.functional as F
from torch import nn

from zoo.peft.config import ConfigError, MethodConfig, option, require_choice, require_positive
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import WrappedLayer
from zoo.peft.mixed import mixed_forward
from zoo.peft.registry import register_method
from zoo.peft.targeting import base_of
from zoo.strict_model import Number

VARIANTS = ("houlsby", "pfeiffer")
SIZES = {"tiny": 8, "small": 64}
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "swish": F.silu,
    "tanh": torch.tanh,
}
DEFAULT_REDUCTION = 16


class BottleneckAdapterConfig(MethodConfig):
    variant: str = option(
        "houlsby", help="'houlsby': after attention output and FFN output; 'pfeiffer': after FFN output only."
    )
    reduction_factor: Number | None = option(
        None, help="Bottleneck = hidden size / reduction_factor (16 when neither this nor size is set)."
    )
    size: str | None = option(None, help="Named bottleneck size instead of reduction_factor: 'tiny' = 8, 'small' = 64.")
    non_linearity: str = option("relu", help="Activation in the bottleneck: relu, gelu, swish or tanh.")

    def check(self) -> None:
        super().check()
        require_choice(self, "variant", VARIANTS)
        require_choice(self, "non_linearity", tuple(ACTIVATIONS))
        if self.reduction_factor is not None:
            require_positive(self, "reduction_factor")
        if self.size is not None:
            require_choice(self, "size", tuple(SIZES))
            if self.reduction_factor is not None:
                raise ConfigError(
                    f"adapter: size={self.size!r} and reduction_factor={self.reduction_factor!r} both set the bottleneck; give one"
                )
        if self.target_modules is not None:
            raise ConfigError(
                f"adapter: target_modules={self.target_modules!r} is not used; variant='houlsby' or 'pfeiffer' "
                f"decides where adapters go; leave it unset"
            )

    def bottleneck(self, hidden: int) -> int:
        if self.size is not None:
            return SIZES[self.size]
        return max(1, round(hidden / (self.reduction_factor or DEFAULT_REDUCTION)))


class BottleneckAdapter(WrappedLayer):
    """A projection followed by serial bottleneck adapters, one per adapter name."""

    adapter_groups: tuple[str, ...] = ("adapter_down", "adapter_up")
    adapter_settings = ("non_linearity",)
    mixes_rows = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.non_linearity: dict[str, str] = {}

    def add_adapter(self, name: str, bottleneck: int, non_linearity: str) -> None:
        base = cast(nn.Linear, base_of(self.base_layer))  # inject_adapter checks it is one
        width = base.out_features
        down, up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.adapter_down[name] = down.to(base.weight.device, base.weight.dtype)
        self.adapter_up[name] = up.to(base.weight.device, base.weight.dtype)
        self.non_linearity[name] = non_linearity

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.row_groups is not None:
            return mixed_forward(self, x, args, kwargs)
        out = self.base_layer(x, *args, **kwargs)
        name = self.active
        return out if name is None else self.adapted_rows(name, x, out)

    def adapted_rows(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Adapter ``name`` applied to the projection's output ``out`` (all rows, or its rows of a mixed batch)."""
        return out + self.bottleneck(name, out)

    def bottleneck(self, name: str, y: torch.Tensor) -> torch.Tensor:
        """What adapter ``name`` adds to the projection's output ``y``: W_up act(W_down y + b_down) + b_up."""
        activation = ACTIVATIONS[self.non_linearity[name]]
        return self.adapter_up[name](activation(self.adapter_down[name](y)))


@register_method("adapter", BottleneckAdapterConfig, needs_structure=True, starts_at_identity=True)
def inject_adapter(context: InjectionContext, config: BottleneckAdapterConfig) -> None:
    inject_adapter_layers(context, config)


def inject_adapter_layers(
    context: InjectionContext, config: BottleneckAdapterConfig, layer_class: type[BottleneckAdapter] = BottleneckAdapter
) -> None:
    """Shared by adapter and unipelt (whose ``layer_class`` gates the bottleneck): wrap each projection
    the variant names and add the adapter to it."""
    structure = context.require_structure()
    places = [structure.attention_out, structure.ffn_out] if config.variant == "houlsby" else [structure.ffn_out]
    for block in context.block_names():
        for place in places:
            projection = base_of(structure.submodule(context.model, block, place))
            if not isinstance(projection, nn.Linear):
                raise ConfigError(
                    f"adapter: {block}.{place} is a {type(projection).__name__}; bottleneck adapters follow an nn.Linear projection"
                )
            layer = context.wrap(f"{block}.{place}", layer_class, layer_class)
            layer.add_adapter(context.adapter_name, config.bottleneck(projection.out_features), config.non_linearity)
