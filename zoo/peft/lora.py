"""LoRA: low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", arXiv:2106.09685).

    h = W x + (lora_alpha / r) * B A x,    A in R^{r x in}, B in R^{out x r}, B = 0 at init

so the adapted model starts equal to the base. Trainable: A and B of every targeted
layer (plus ``modules_to_save``). ``use_rslora`` scales by lora_alpha / sqrt(r) instead
(Kalajdzievski 2023).

Targets: ``nn.Linear``, ``nn.Conv2d`` (A is a conv with the base kernel, B a 1x1 conv),
slices of a fused q/k/v ``nn.Linear`` (timm's ``qkv``: ``"qkv[q,v]"``), and slices of
``nn.MultiheadAttention.in_proj_weight`` (open_clip: ``"attn[q,v]"``), where the update
is added to the projection weight because the module never calls a Linear for it.

On a plain ``nn.Linear`` the update is added into the base output in place
(``_AddLowRankInPlace``): on fused slices only the adapted columns are computed.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from zoo.peft.config import (
    ConfigError,
    MethodConfig,
    option,
    require_int_positive,
    require_positive,
    require_probability,
)
from zoo.peft.engine import InjectionContext, adapter_modules
from zoo.peft.layers import DeltaWeightLayer, logical_path
from zoo.peft.mixed import mixed_forward, mixed_multihead_forward
from zoo.peft.registry import register_method
from zoo.peft.stacked_rows import stacked_forward
from zoo.peft.targeting import FUSED_SLICE_NAMES, base_of, innermost_path, slice_bounds
from zoo.strict_model import Number


class LoraConfig(MethodConfig):
    r: int = option(8, help="Rank of the update B A.")
    lora_alpha: Number = option(8, help="Scale numerator: the update is multiplied by lora_alpha / r.")
    lora_dropout: Number = option(0.0, help="Dropout on the input of the low-rank branch.")
    use_rslora: bool = option(False, help="Scale by lora_alpha / sqrt(r) (rank-stabilised LoRA).")

    def check(self) -> None:
        super().check()
        require_int_positive(self, "r")
        require_positive(self, "lora_alpha")
        require_probability(self, "lora_dropout")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def _init_pair(a: nn.Linear | nn.Conv2d, b: nn.Linear | nn.Conv2d) -> None:
    # As in the reference implementation: A like a default Linear, B zero so the update starts at 0.
    nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
    nn.init.zeros_(b.weight)


class LoraLayer(DeltaWeightLayer):
    """LoRA on a Linear or Conv2d, optionally restricted to slices of a fused q/k/v output."""

    adapter_groups: tuple[str, ...] = ("lora_A", "lora_B")
    adapter_settings = ("lora_dropout", "scaling", "slices")
    mixes_rows = True
    stacks_rows = True
    """Mixed batches may take the stacked path (zoo.peft.stacked_rows): the update is ``scaling * B A x``."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.slices: dict[str, dict[str, tuple[int, int]]] = {}

    def _base(self) -> nn.Linear | nn.Conv2d:
        # inject_lora_layers wraps only Linear and Conv2d here (MultiheadAttention has its own class)
        return cast("nn.Linear | nn.Conv2d", base_of(self.base_layer))

    def _factors(self, name: str, slice_name: str | None = None) -> tuple[nn.Module, nn.Module]:
        """A and B of adapter ``name`` (of one slice of a fused projection)."""
        a, b = self.lora_A[name], self.lora_B[name]
        if slice_name is not None:
            a, b = cast(nn.ModuleDict, a)[slice_name], cast(nn.ModuleDict, b)[slice_name]
        return a, b

    def _factor_weights(self, name: str, slice_name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights of A and B of adapter ``name`` (of one slice of a fused projection)."""
        a, b = self._factors(name, slice_name)
        return cast(torch.Tensor, a.weight), cast(torch.Tensor, b.weight)

    def _make_pair(self, r: int) -> tuple[nn.Module, nn.Module]:
        base = self._base()
        a: nn.Linear | nn.Conv2d
        b: nn.Linear | nn.Conv2d
        if isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise ConfigError(
                    f"lora on a grouped Conv2d (groups={base.groups}) is not supported; target another layer"
                )
            a = nn.Conv2d(
                base.in_channels,
                r,
                base.kernel_size,  # type: ignore[arg-type]  # a Conv2d's own: two ints, typed tuple[int, ...]
                base.stride,  # type: ignore[arg-type]
                base.padding,  # type: ignore[arg-type]
                base.dilation,  # type: ignore[arg-type]
                bias=False,
            )
            b = nn.Conv2d(r, base.out_channels, 1, bias=False)
        else:
            a = nn.Linear(base.in_features, r, bias=False)
            b = nn.Linear(r, base.out_features, bias=False)
        _init_pair(a, b)
        weight = base.weight
        return a.to(weight.device, weight.dtype), b.to(weight.device, weight.dtype)

    def add_adapter(self, name: str, config: LoraConfig, slices: tuple[str, ...] | None) -> None:
        base = self._base()
        self.slices[name] = slice_bounds(base.weight.shape[0], slices)
        if self.slices[name]:
            if isinstance(base, nn.Conv2d):
                raise ConfigError("slice selectors like 'qkv[q,v]' apply to a fused Linear, not a Conv2d")
            pairs = {}
            for slice_name, (start, end) in self.slices[name].items():
                a = nn.Linear(base.in_features, config.r, bias=False)
                b = nn.Linear(config.r, end - start, bias=False)
                _init_pair(a, b)
                pairs[slice_name] = (
                    a.to(base.weight.device, base.weight.dtype),
                    b.to(base.weight.device, base.weight.dtype),
                )
            self.lora_A[name] = nn.ModuleDict({s: p[0] for s, p in pairs.items()})
            self.lora_B[name] = nn.ModuleDict({s: p[1] for s, p in pairs.items()})
        else:
            self.lora_A[name], self.lora_B[name] = self._make_pair(config.r)
        self.lora_dropout[name] = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        self.scaling[name] = config.scaling

    def delta_weight(self, name: str) -> torch.Tensor:
        """The dense update (lora_alpha / r) B A, shaped like the base weight."""
        base = self._base()
        weight = base.weight
        if self.slices[name]:
            delta = torch.zeros_like(weight)
            for slice_name, (start, end) in self.slices[name].items():
                a, b = self._factor_weights(name, slice_name)
                delta[start:end] = b @ a
            return delta * self.scaling[name]
        a, b = self._factor_weights(name)
        if isinstance(base, nn.Conv2d):
            delta = (b.flatten(1) @ a.flatten(1)).view(weight.shape)
        else:
            delta = b @ a
        return delta * self.scaling[name]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.row_groups is not None:
            stacked = stacked_forward(self, x, args, kwargs)
            return stacked if stacked is not None else mixed_forward(self, x, args, kwargs)
        name = self.active
        if (
            name is not None
            and not args
            and not kwargs
            and _is_unobserved_linear(self.base_layer)
            and not self._factors_observed(name)
        ):
            return self._add_in_place(x, name)
        out = self.base_layer(x, *args, **kwargs)
        return out if name is None else self.adapted_rows(name, x, out)

    def adapted_rows(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Adapter ``name``'s output for inputs ``x`` whose base output is ``out`` (all rows, or one
        adapter's rows of a mixed batch): ``out + (lora_alpha / r) B A dropout(x)``."""
        dropped = self.lora_dropout[name](x)
        scaling = self.branch_scaling(name, x)
        bounds = self.slices[name]
        # Scaling the rank-r activations costs far less than scaling the full-width update.
        if not bounds:
            return out + self.lora_B[name](self.lora_A[name](dropped) * scaling)
        if self._factors_observed(name):  # each slice's A and B called as modules, on the batch, for the hooks
            pieces, column = [], 0
            for slice_name, (start, end) in sorted(bounds.items(), key=lambda item: item[1]):
                down, up = self._factors(name, slice_name)
                pieces += [out.new_zeros((*out.shape[:-1], start - column)), up(down(dropped) * scaling)]
                column = end
            pieces.append(out.new_zeros((*out.shape[:-1], out.shape[-1] - column)))
            return out + torch.cat(pieces, -1)
        # Another base layer may need its output in backward: one block matrix holds every
        # slice's B (zero rows for the slices left out), so the update is one matmul and one
        # out-of-place add; writing each slice into ``out`` through autograd made backward
        # copy the whole fused gradient once per slice.
        a_parts = [self._factor_weights(name, slice_name)[0] for slice_name in bounds]
        a = torch.cat(a_parts)
        b = a.new_zeros(out.shape[-1], a.shape[0])
        column = 0
        for part, (slice_name, (start, end)) in zip(a_parts, bounds.items()):
            b[start:end, column : column + part.shape[0]] = self._factor_weights(name, slice_name)[1]
            column += part.shape[0]
        return out + F.linear(F.linear(dropped, a) * scaling, b)

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.__dict__.pop("_stack", None)  # the stacked factors of a mixed batch (zoo.peft.stacked_rows) held it

    def output_scale(self, name: str) -> torch.Tensor | None:
        """What adapter ``name`` multiplies each output column of ``W x + dW x`` by (None: nothing; DoRA's
        magnitude over the norm), full width, for the stacked mixed path (zoo.peft.stacked_rows)."""
        return None

    def branch_scaling(self, name: str, x: torch.Tensor) -> float | torch.Tensor:
        """What adapter ``name`` multiplies its rank-r activations of input ``x`` by in ``adapted_rows``:
        lora_alpha / r. A subclass may make it depend on the input (unipelt's gate); the in-place path
        of ``forward`` reads ``scaling`` itself, so such a subclass must not take it."""
        return self.scaling[name]

    def _factors_observed(self, name: str) -> bool:
        """Whether hooks watch adapter ``name``'s A or B (Opacus' per-example gradients do): then they are called
        as modules on the batch, which the faster paths that read their weights would bypass."""
        factors = [*self.lora_A[name].modules(), *self.lora_B[name].modules()]
        return any(module._forward_hooks or module._backward_hooks for module in factors)

    def _add_in_place(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """A plain Linear base: its backward keeps no output, so the update is added into that
        output in place, with no full-width update tensor and no full-width add; on fused slices
        only the adapted columns are computed (see _AddLowRankInPlace)."""
        # The Linear sees 2-D tokens, so its output is a tensor of its own (a 3-D call returns a
        # view of one, and writing into a view makes autograd copy the whole gradient back).
        tokens = x.reshape(-1, x.shape[-1])
        out = self.base_layer(tokens)
        low_rank_input = self.lora_dropout[name](tokens)
        bounds = self.slices[name]
        if bounds:
            a_parts, b_parts = zip(*(self._factor_weights(name, slice_name) for slice_name in bounds))
            a, columns = torch.cat(a_parts), tuple(bounds.values())
        else:
            a, b = self._factor_weights(name)
            b_parts, columns = (b,), ((0, out.shape[-1]),)
        # Scaling the rank-r activations costs far less than scaling the full-width update.
        low_rank = F.linear(low_rank_input, a) * self.scaling[name]
        out = _AddLowRankInPlace.apply(out, low_rank, columns, *b_parts)
        return out.view(*x.shape[:-1], out.shape[-1])


def _is_unobserved_linear(module: nn.Module) -> bool:
    """A plain Linear without hooks: it may be called on flattened tokens, since nothing sees
    the shape of its input or output."""
    return type(module).forward is nn.Linear.forward and not (module._forward_hooks or module._forward_pre_hooks)


class _AddLowRankInPlace(torch.autograd.Function):
    """``out[..., start:end] += low_rank[..., cols] @ B.T`` for each ``(start, end)`` and B, in place.

    ``low_rank`` holds the rank-r activations of every slice side by side (B's columns say how
    many belong to each). Only the adapted columns are multiplied and written; backward passes
    the gradient of ``out`` through untouched (autograd's own in-place slice writes clone it once
    per slice) and reads each slice of it as a strided view, without copying.
    ``out`` must be contiguous and not needed by the backward of whatever produced it.
    """

    @staticmethod
    def forward(ctx, out, low_rank, bounds, *b_weights):
        flat_out = out.view(-1, out.shape[-1])
        # Under autocast the output and activations may be bf16 and B fp32: compute in out's dtype.
        flat_low = low_rank.reshape(-1, low_rank.shape[-1]).to(out.dtype)
        column = 0
        for (start, end), b in zip(bounds, b_weights):
            rank = b.shape[1]
            flat_out[:, start:end].addmm_(flat_low[:, column : column + rank], b.t().to(out.dtype))
            column += rank
        ctx.mark_dirty(out)
        ctx.save_for_backward(low_rank, *b_weights)
        ctx.bounds = bounds
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        low_rank, *b_weights = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])
        flat_low = low_rank.reshape(-1, low_rank.shape[-1]).to(grad.dtype)
        grad_low, grad_b = [], []
        column = 0
        for (start, end), b in zip(ctx.bounds, b_weights):
            rank = b.shape[1]
            grad_slice = flat_grad[:, start:end]
            if ctx.needs_input_grad[1]:
                grad_low.append(grad_slice @ b.to(grad.dtype))
            # (r x tokens) @ (tokens x width), transposed: about twice as fast as the other order
            grad_b.append((flat_low[:, column : column + rank].t() @ grad_slice).t().contiguous().to(b.dtype))
            column += rank
        low_rank_grad = torch.cat(grad_low, dim=1).view_as(low_rank).to(low_rank.dtype) if grad_low else None
        return (grad, low_rank_grad, None, *grad_b)


class LoraMultiheadAttention(LoraLayer):
    """LoRA on slices of ``nn.MultiheadAttention.in_proj_weight``.

    The module multiplies by ``in_proj_weight`` inside ``F.multi_head_attention_forward``,
    so the update is added to that weight and the module is called with the sum.
    """

    weight_name = "in_proj_weight"

    def _attention(self) -> nn.MultiheadAttention:
        return cast(nn.MultiheadAttention, base_of(self.base_layer))

    def add_adapter(self, name: str, config: LoraConfig, slices: tuple[str, ...] | None) -> None:
        base = self._attention()
        if not base._qkv_same_embed_dim:
            raise ConfigError(
                "lora on nn.MultiheadAttention needs q, k and v of the same size (kdim == vdim == embed_dim)"
            )
        embed = base.embed_dim
        slices = slices or FUSED_SLICE_NAMES
        self.slices[name] = slice_bounds(3 * embed, slices)
        device, dtype = base.in_proj_weight.device, base.in_proj_weight.dtype
        pairs = {}
        for slice_name in self.slices[name]:
            a, b = nn.Linear(embed, config.r, bias=False), nn.Linear(config.r, embed, bias=False)
            _init_pair(a, b)
            pairs[slice_name] = (a.to(device, dtype), b.to(device, dtype))
        self.lora_A[name] = nn.ModuleDict({s: p[0] for s, p in pairs.items()})
        self.lora_B[name] = nn.ModuleDict({s: p[1] for s, p in pairs.items()})
        self.lora_dropout[name] = nn.Identity()
        if config.lora_dropout:
            raise ConfigError(
                "lora_dropout is not supported on nn.MultiheadAttention targets (the update is applied to the weight); use 0"
            )
        self.scaling[name] = config.scaling

    def delta_weight(self, name: str) -> torch.Tensor:
        weight = self._attention().in_proj_weight
        delta = torch.zeros_like(weight)
        for slice_name, (start, end) in self.slices[name].items():
            a, b = self._factor_weights(name, slice_name)
            delta[start:end] = b @ a
        return delta * self.scaling[name]

    def forward(self, *args, **kwargs):
        if self.row_groups is not None:
            return mixed_multihead_forward(self, args, kwargs)
        name = self.active
        if name is None:
            return self.base_layer(*args, **kwargs)
        return functional_call(self.base_layer, self.adapted_tensors(name), args, kwargs)

    def adapted_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """What the module is called with under adapter ``name``: ``in_proj_weight + dW``."""
        weight = self._attention().in_proj_weight + self.delta_weight(name)
        return {innermost_path(self.base_layer, "in_proj_weight"): weight}


def inject_lora_layers(
    context: InjectionContext, config: LoraConfig, linear_class=LoraLayer, mha_class=LoraMultiheadAttention
) -> None:
    """Shared by lora and dora: wrap every target and add the adapter to it."""
    for target in context.targets(config, allowed=(nn.Linear, nn.Conv2d, nn.MultiheadAttention)):
        base = base_of(target.module)
        layer_class = mha_class if isinstance(base, nn.MultiheadAttention) else linear_class
        if layer_class is None:
            raise ConfigError(f"{context.method} does not support {type(base).__name__} targets ({target.name})")
        layer = context.wrap(target.name, layer_class, layer_class)
        layer.add_adapter(context.adapter_name, config, target.slices)


def lora_to_peft(config: LoraConfig, model: nn.Module, adapter_name: str, use_dora: bool = False) -> dict | None:
    layers = [(n, m) for n, m in adapter_modules(model) if isinstance(m, LoraLayer) and m.has_adapter(adapter_name)]
    if any(m.slices.get(adapter_name) or isinstance(m, LoraMultiheadAttention) for _, m in layers):
        return None  # fused-slice targets have no peft equivalent
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "use_rslora": config.use_rslora,
        "use_dora": use_dora,
        "target_modules": sorted(logical_path(n) for n, _ in layers),
        "modules_to_save": config.modules_to_save or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "task_type": None,
        "base_model_name_or_path": None,
    }


_UNSUPPORTED_PEFT_OPTIONS = {
    "bias": "none",
    "fan_in_fan_out": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
}


def lora_from_peft(peft_config: dict, use_dora: bool = False) -> dict | None:
    if bool(peft_config.get("use_dora", False)) != use_dora:
        return None
    for key, neutral in _UNSUPPORTED_PEFT_OPTIONS.items():
        value = peft_config.get(key, neutral)
        if value not in (neutral, None) and value != neutral:
            raise ConfigError(f"peft adapter uses {key}={value!r}, which zoo does not support; allowed: {neutral!r}")
    targets = peft_config.get("target_modules")
    return {
        "r": peft_config["r"],
        "lora_alpha": peft_config.get("lora_alpha", 8),
        "lora_dropout": peft_config.get("lora_dropout", 0.0),
        "use_rslora": peft_config.get("use_rslora", False),
        "target_modules": sorted(targets) if isinstance(targets, (list, set, tuple)) else targets,
        "modules_to_save": peft_config.get("modules_to_save") or [],
    }


@register_method(
    "lora",
    LoraConfig,
    mergeable=True,
    starts_at_identity=True,
    default_targets=("query", "value"),
    peft_type="LORA",
    to_peft=lora_to_peft,
    from_peft=lora_from_peft,
)
def inject_lora(context: InjectionContext, config: LoraConfig) -> None:
    inject_lora_layers(context, config)
