"""AdaptFormer (Chen et al. 2022, "AdaptFormer: Adapting Vision Transformers for Scalable
Visual Recognition", arXiv:2205.13535).

A scaled bottleneck runs in parallel with each block's feed-forward network:

    FFN'(x) = FFN(x) + s * W_up relu(W_down x + b_down) + s * b_up

x is the FFN's input, i.e. the input of its first Linear (the structure's ``ffn_in``). On a
pre-norm ViT that is the *normalised* stream norm2(h); the original code feeds the
un-normalised residual stream h to the bottleneck instead. zoo uses the FFN input so
that the same definition holds on post-norm encoders (BERT, where the FFN input is the
residual stream) and no block forward needs rewriting. W_up, b_up start at zero
(identity at init); W_down as nn.Linear's default init. Trainable: W_down, b_down, W_up,
b_up of every block (plus ``modules_to_save``).

Implementation: a wrapper of the FFN's last Linear (``ffn_out``) adds the branch to its
output; a forward pre-hook on ``ffn_in`` hands it the FFN input of the same call.
"""

from __future__ import annotations

import functools
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from zoo.peft.config import (
    ConfigError,
    MethodConfig,
    option,
    require_int_positive,
    require_positive,
    require_probability,
)
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import WrappedLayer
from zoo.peft.registry import register_method
from zoo.peft.targeting import base_of
from zoo.strict_model import Number


class AdaptFormerConfig(MethodConfig):
    bottleneck: int = option(64, help="Width of the parallel bottleneck.")
    scale: Number = option(0.1, help="Scale s of the bottleneck's output.")
    adapter_dropout: Number = option(0.0, help="Dropout after the bottleneck's relu (the original code uses 0.1).")

    def check(self) -> None:
        super().check()
        require_int_positive(self, "bottleneck")
        require_positive(self, "scale")
        require_probability(self, "adapter_dropout")
        if self.target_modules is not None:
            raise ConfigError(
                f"adaptformer: target_modules={self.target_modules!r} is not used; the bottleneck runs beside "
                f"every block's FFN; leave it unset"
            )


class AdaptFormerLayer(WrappedLayer):
    """The FFN's output Linear plus the scaled parallel bottleneck fed by the FFN's input."""

    adapter_groups = ("down_proj", "up_proj")
    adapter_settings = ("scale", "dropout")
    mixes_rows = True

    def __init__(self, base_layer: nn.Module, ffn_in: nn.Module) -> None:
        super().__init__(base_layer)
        self.down_proj = nn.ModuleDict()
        self.up_proj = nn.ModuleDict()
        self.scale: dict[str, float] = {}
        self.dropout: dict[str, float] = {}
        self._ffn_input: torch.Tensor | None = None
        self._handle = ffn_in.register_forward_pre_hook(self._keep_ffn_input)

    def add_adapter(self, name: str, config: AdaptFormerConfig, in_features: int) -> None:
        base = cast(nn.Linear, base_of(self.base_layer))  # inject_adaptformer checks it is one
        down, up = nn.Linear(in_features, config.bottleneck), nn.Linear(config.bottleneck, base.out_features)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.down_proj[name] = down.to(base.weight.device, base.weight.dtype)
        self.up_proj[name] = up.to(base.weight.device, base.weight.dtype)
        self.scale[name] = config.scale
        self.dropout[name] = config.adapter_dropout

    def _keep_ffn_input(self, module, args):
        if self.active is not None or self.row_groups is not None:
            self._ffn_input = args[0]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        name, groups = self.active, self.row_groups
        if name is None and groups is None:
            return out
        ffn_input, self._ffn_input = self._ffn_input, None  # do not keep activations alive past this call
        if ffn_input is None:
            raise RuntimeError("adaptformer: the FFN's output layer ran without its input layer running first")
        if groups is not None:  # a mixed batch: each adapter's rows get its bottleneck of their FFN input
            axis = groups.axis(self)
            return groups.replace(
                out,
                self.adapter_names(),
                lambda row_name, index: self.adapted_rows(
                    row_name, ffn_input.index_select(axis, index), out.index_select(axis, index)
                ),
                self,
                axis,
            )
        return self.adapted_rows(cast(str, name), ffn_input, out)

    def adapted_rows(self, name: str, ffn_input: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Adapter ``name``'s output for rows whose FFN input is ``ffn_input`` and base output ``out``."""
        hidden = F.dropout(F.relu(self.down_proj[name](ffn_input)), self.dropout[name], self.training)
        return out + self.scale[name] * self.up_proj[name](hidden)

    def remove_hooks(self) -> None:
        self._handle.remove()
        self._ffn_input = None


@register_method("adaptformer", AdaptFormerConfig, needs_structure=True, starts_at_identity=True)
def inject_adaptformer(context: InjectionContext, config: AdaptFormerConfig) -> None:
    structure = context.require_structure()
    for block in context.block_names():
        ffn_in = structure.submodule(context.model, block, structure.ffn_in)
        ffn_out = structure.submodule(context.model, block, structure.ffn_out)
        for part, module in ((structure.ffn_in, ffn_in), (structure.ffn_out, ffn_out)):
            if not isinstance(base_of(module), nn.Linear):
                raise ConfigError(
                    f"adaptformer: {block}.{part} is a {type(base_of(module)).__name__}; AdaptFormer needs Linear FFN layers"
                )
        layer = context.wrap(
            f"{block}.{structure.ffn_out}", AdaptFormerLayer, functools.partial(AdaptFormerLayer, ffn_in=ffn_in)
        )
        layer.add_adapter(context.adapter_name, config, cast(nn.Linear, base_of(ffn_in)).in_features)
        layer.train(context.model.training)  # the bottleneck's dropout follows the model's mode
