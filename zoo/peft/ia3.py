"""(IA)^3: infused adapter by inhibiting and amplifying inner activations (Liu et al. 2022,
"Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
arXiv:2205.05638).

Learned vectors rescale the keys, the values and the FFN's inner activations:

    k = l_k * (W_k x + b_k),    v = l_v * (W_v x + b_v),    ffn_out(h) = W_out (l_ff * h) + b_out

l starts at ones, so the adapted model starts equal to the base. Trainable: the vectors
(``ia3_l``; shape ``(out, 1)`` for output scaling and ``(1, in)`` for the input scaling of
``feedforward_modules``, as in HF PEFT), plus ``modules_to_save``.

Targets: ``nn.Linear``, slices of a fused q/k/v Linear (timm's ``"attn.qkv[k,v]"``:
only the k and v rows are rescaled; the vector holds the selected slices in q, k, v
order), and slices of ``nn.MultiheadAttention`` (open_clip's ``"attn[k,v]"``): the k and v
rows of ``in_proj_weight`` and ``in_proj_bias`` are rescaled, which is the same as rescaling
the k and v projections' outputs, and the module is called with the rescaled tensors.
Adapters without fused slices are saved as HF PEFT's ``IA3`` and load in ``peft``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.func import functional_call

from zoo.peft.config import ConfigError, MethodConfig, option
from zoo.peft.engine import InjectionContext, adapter_modules
from zoo.peft.layers import WrappedLayer, logical_path
from zoo.peft.mixed import mixed_forward, mixed_multihead_forward
from zoo.peft.registry import register_method
from zoo.peft.targeting import FUSED_SLICE_NAMES, base_of, innermost_path, match_modules, slice_bounds


class IA3Config(MethodConfig):
    feedforward_modules: list[str] | str | None = option(
        None,
        help="Targets whose input (not output) is rescaled, as names, suffixes or a regex; only targets count. "
        "None uses the backbone's FFN output projection.",
    )
    init_ia3_weights: bool = option(
        True, help="Start the vectors at ones (identity); False draws them from N(0, 1) as peft does."
    )


class IA3Layer(WrappedLayer):
    """Rescales the output rows (or, for a feed-forward layer, the input) of a Linear."""

    adapter_groups = ("ia3_l",)
    adapter_settings = ("is_feedforward", "slices")
    mixes_rows = True
    weight_name, bias_name = "weight", "bias"
    """The base module's attributes holding the rescaled weight and bias."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.ia3_l = nn.ParameterDict()
        self.is_feedforward: dict[str, bool] = {}
        self.slices: dict[str, dict[str, tuple[int, int]]] = {}

    def add_adapter(self, name: str, config: IA3Config, slices: tuple[str, ...] | None, feedforward: bool) -> None:
        weight = getattr(base_of(self.base_layer), self.weight_name)
        out_features, in_features = weight.shape
        bounds = slice_bounds(out_features, slices)
        if bounds and feedforward:
            raise ConfigError(
                "ia3: a fused q/k/v slice target scales outputs; it cannot also be in feedforward_modules"
            )
        if feedforward:
            shape = (1, in_features)
        else:
            shape = (sum(end - start for start, end in bounds.values()) if bounds else out_features, 1)
        vector = torch.ones(shape) if config.init_ia3_weights else torch.randn(shape)
        self.ia3_l[name] = nn.Parameter(vector.to(weight.device, weight.dtype))
        self.is_feedforward[name] = feedforward
        self.slices[name] = bounds

    def scale_vector(self, name: str) -> torch.Tensor:
        """The factor per output row (input column for feed-forward layers); 1 outside adapted slices."""
        vector = self.ia3_l[name].flatten()
        if not self.slices[name]:
            return vector
        out_features = getattr(base_of(self.base_layer), self.weight_name).shape[0]
        pieces, offset, position = [], 0, 0
        for start, end in self.slices[name].values():
            if start > position:
                pieces.append(vector.new_ones(start - position))
            pieces.append(vector[offset : offset + end - start])
            offset, position = offset + end - start, end
        if position < out_features:
            pieces.append(vector.new_ones(out_features - position))
        return torch.cat(pieces)

    def merge(self, name: str) -> None:
        bias = getattr(base_of(self.base_layer), self.bias_name)
        with torch.no_grad():
            scale = self.scale_vector(name)
            weight = self._keep_original(f"base_layer.{self.weight_name}")
            if self.is_feedforward[name]:
                weight.mul_(scale.to(weight.dtype)[None, :])
            else:
                weight.mul_(scale.to(weight.dtype)[:, None])
                if bias is not None:
                    self._keep_original(f"base_layer.{self.bias_name}").mul_(scale.to(bias.dtype))
        self.merged_adapter = name

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.row_groups is not None:
            return mixed_forward(self, x, args, kwargs)
        name = self.active
        if name is None:
            return self.base_layer(x, *args, **kwargs)
        scale = self.scale_vector(name)
        if self.is_feedforward[name]:
            return self.base_layer(x * scale, *args, **kwargs)
        return self.base_layer(x, *args, **kwargs) * scale

    def adapted_rows(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """One adapter's rows of a mixed batch, ``out`` their base output: rescaled outputs, or for a
        feed-forward layer the layer called again on the rescaled inputs."""
        if self.is_feedforward[name]:
            return self.base_layer(x * self.scale_vector(name))
        return out * self.scale_vector(name)


class IA3MultiheadAttention(IA3Layer):
    """Rescales rows of ``nn.MultiheadAttention``'s ``in_proj_weight`` and ``in_proj_bias``.

    The module multiplies by them inside ``F.multi_head_attention_forward`` and never calls a
    Linear for q, k or v, so it is called with the rescaled tensors instead.
    """

    weight_name, bias_name = "in_proj_weight", "in_proj_bias"

    def add_adapter(self, name: str, config: IA3Config, slices: tuple[str, ...] | None, feedforward: bool) -> None:
        base = base_of(self.base_layer)
        if feedforward:
            raise ConfigError(
                "ia3: an nn.MultiheadAttention target rescales its k/v projections; it cannot be in feedforward_modules"
            )
        if not base._qkv_same_embed_dim:
            raise ConfigError(
                "ia3 on nn.MultiheadAttention needs q, k and v of the same size (kdim == vdim == embed_dim)"
            )
        super().add_adapter(name, config, slices or FUSED_SLICE_NAMES, feedforward=False)

    def forward(self, *args, **kwargs):
        if self.row_groups is not None:
            return mixed_multihead_forward(self, args, kwargs)
        name = self.active
        if name is None:
            return self.base_layer(*args, **kwargs)
        return functional_call(self.base_layer, self.adapted_tensors(name), args, kwargs)

    def adapted_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """What the module is called with under adapter ``name``: rescaled rows of its in-projection."""
        base = cast(nn.MultiheadAttention, base_of(self.base_layer))
        scale = self.scale_vector(name)
        tensors = {innermost_path(self.base_layer, "in_proj_weight"): base.in_proj_weight * scale[:, None]}
        if base.in_proj_bias is not None:
            tensors[innermost_path(self.base_layer, "in_proj_bias")] = base.in_proj_bias * scale
        return tensors


def _feedforward_names(context: InjectionContext, config: IA3Config) -> set[str]:
    patterns = config.feedforward_modules
    if patterns is None:
        structure = context.structure
        if structure is None:
            return set()
        # Compare modules, not names: a structure may reach the FFN through an alias (T5's ``ffn``).
        ffn_outs = {
            id(base_of(structure.submodule(context.model, block, structure.ffn_out)))
            for block in structure.block_names(context.model)
        }
        return {name for name, module in context.model.named_modules() if name and id(base_of(module)) in ffn_outs}
    if isinstance(patterns, list) and not patterns:
        return set()
    return {target.name for target in match_modules(context.model, patterns)}


def ia3_to_peft(config: IA3Config, model: nn.Module, adapter_name: str) -> dict | None:
    layers = [(n, m) for n, m in adapter_modules(model) if isinstance(m, IA3Layer) and m.has_adapter(adapter_name)]
    if any(m.slices[adapter_name] for _, m in layers):
        return None  # fused-slice targets have no peft equivalent
    return {
        "target_modules": sorted(logical_path(n) for n, _ in layers),
        "feedforward_modules": sorted(logical_path(n) for n, m in layers if m.is_feedforward[adapter_name]),
        "init_ia3_weights": config.init_ia3_weights,
        "modules_to_save": config.modules_to_save or None,
        "fan_in_fan_out": False,
        "exclude_modules": None,
        "inference_mode": True,
        "task_type": None,
        "base_model_name_or_path": None,
    }


def ia3_from_peft(peft_config: dict) -> dict:
    for key in ("fan_in_fan_out", "exclude_modules"):
        if peft_config.get(key):
            raise ConfigError(f"peft adapter uses {key}={peft_config[key]!r}, which zoo's ia3 does not support")
    targets = peft_config.get("target_modules")
    feedforward = peft_config.get("feedforward_modules")
    as_option = lambda value: sorted(value) if isinstance(value, (list, set, tuple)) else value
    return {
        "target_modules": as_option(targets),
        "feedforward_modules": as_option(feedforward) if feedforward is not None else [],  # None means none in peft
        "init_ia3_weights": peft_config.get("init_ia3_weights", True),
        "modules_to_save": peft_config.get("modules_to_save") or [],
    }


@register_method(
    "ia3",
    IA3Config,
    mergeable=True,
    starts_at_identity=True,
    default_targets=("key", "value", "ffn_out"),
    peft_type="IA3",
    to_peft=ia3_to_peft,
    from_peft=ia3_from_peft,
)
def inject_ia3(context: InjectionContext, config: IA3Config) -> None:
    feedforward = _feedforward_names(context, config)
    for target in context.targets(config, allowed=(nn.Linear, nn.MultiheadAttention)):
        layer_class = IA3MultiheadAttention if isinstance(base_of(target.module), nn.MultiheadAttention) else IA3Layer
        layer = context.wrap(target.name, layer_class, layer_class)
        layer.add_adapter(context.adapter_name, config, target.slices, feedforward=target.name in feedforward)
