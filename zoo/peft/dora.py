"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024, "DoRA: Weight-Decomposed
Low-Rank Adaptation", arXiv:2402.09353).

The adapted weight is split into a magnitude and a direction, and LoRA adapts the direction:

    y = m * (W + dW) x / ||W + dW||_c + bias,    dW = (lora_alpha / r) B A

where ``||.||_c`` is the norm of each output row of the ``(out, in)`` weight (each output
channel of a conv kernel) and ``m`` starts at ``||W||_c``, so the adapted model starts
equal to the base. As the paper suggests (sec. 4.3) and HF PEFT does, the norm is treated
as a constant in the backward pass. Trainable: A, B and m of every targeted layer.

The base matmul is computed once: with ``scale = m / ||W + dW||_c``,

    y = scale * (W x + (lora_alpha / r) B A x) + bias

(for a wrapped layer other than a plain Linear/Conv2d, ``W x = base_layer(x) - bias``) and
``||W + dW||_c`` costs one ``out x r x in`` product per step, without gradient. On a plain
``nn.Linear`` the adapted columns of ``W x`` are rescaled in place (``_DoraColumnsInPlace``),
so the slices of a fused projection cost no full-width temporary.
Dropout (``lora_dropout``) applies to the low-rank branch only; HF PEFT also recomputes
``W dropout(x)`` for the magnitude term in training, which this formulation avoids.

Targets: ``nn.Linear`` and ``nn.Conv2d``, slices of a fused q/k/v Linear (``"qkv[q,v]"``,
with one magnitude entry per adapted row), and slices of ``nn.MultiheadAttention``'s
``in_proj_weight`` (open_clip: ``"attn[q,v]"``), where the module is called with the adapted
weight ``m * (W + dW) / ||W + dW||_c`` in the adapted rows (its bias unchanged), as LoRA
does there. Tensors are saved under HF PEFT's names (``lora_A.weight``, ``lora_B.weight``,
``lora_magnitude_vector``) and, without fused slices, as ``peft_type="LORA"`` with
``use_dora=True``, so those adapters load in ``peft`` and back.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from zoo.peft.engine import InjectionContext
from zoo.peft.lora import (
    LoraConfig,
    LoraLayer,
    LoraMultiheadAttention,
    inject_lora_layers,
    lora_from_peft,
    lora_to_peft,
)
from zoo.peft.registry import register_method
from zoo.peft.targeting import innermost_path


class DoraConfig(LoraConfig):
    """LoRA's options (r, lora_alpha, lora_dropout, use_rslora); the magnitude has none."""


class DoraLayer(LoraLayer):
    """LoRA plus a learned magnitude per output row; plain LoRA adapters may share the layer."""

    adapter_groups = ("lora_A", "lora_B", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_magnitude_vector = nn.ParameterDict()

    def add_adapter(self, name: str, config: LoraConfig, slices: tuple[str, ...] | None) -> None:
        super().add_adapter(name, config, slices)
        if isinstance(config, DoraConfig):
            with torch.no_grad():
                magnitude = self.weight_norm(name).clone()
            self.lora_magnitude_vector[name] = nn.Parameter(magnitude)

    def weight_norm(self, name: str) -> torch.Tensor:
        """``||W + dW||_c`` without gradient, shaped like the magnitude of adapter ``name``."""
        return cached_norm(self, name, self._weight_norm)

    def _weight_norm(self, name: str) -> torch.Tensor:
        base = self._base()
        with torch.no_grad():
            weight = base.weight
            if isinstance(base, nn.Conv2d):
                a, b = self._factor_weights(name)
                adapted = weight + (b.flatten(1) @ a.flatten(1)).view(weight.shape) * self.scaling[name]
                return adapted.flatten(1).norm(dim=1).view(1, -1, 1, 1)
            if not self.slices[name]:
                # addmm computes W + s * B A in one kernel; with B = 0 it returns W bit for bit.
                a, b = self._factor_weights(name)
                adapted = torch.addmm(weight, b, a, alpha=self.scaling[name])
                return adapted.norm(dim=1)
            norms = []
            for slice_name, (start, end) in self.slices[name].items():
                a, b = self._factor_weights(name, slice_name)
                norms.append(torch.addmm(weight[start:end], b, a, alpha=self.scaling[name]).norm(dim=1))
            return torch.cat(norms)

    def dora_scale(self, name: str) -> torch.Tensor:
        """``m / ||W + dW||_c``: gradient reaches m, not the norm."""
        return self.lora_magnitude_vector[name] / self.weight_norm(name)

    def output_scale(self, name: str) -> torch.Tensor | None:
        if name not in self.lora_magnitude_vector or isinstance(self._base(), nn.Conv2d):
            return None
        with torch.no_grad():
            scale = self.dora_scale(name)
            if not self.slices[name]:
                return scale
            full, offset = scale.new_ones(self._base().weight.shape[0]), 0
            for start, end in self.slices[name].values():
                full[start:end] = scale[offset : offset + end - start]
                offset += end - start
            return full

    def merge(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            return super().merge(name)
        base = self._base()
        with torch.no_grad():
            scale = self.dora_scale(name)
            delta = self.delta_weight(name)
            weight = self._keep_original("base_layer.weight")
            if isinstance(base, nn.Conv2d):
                weight.copy_((scale.view(-1, 1, 1, 1) * (weight + delta)).to(weight.dtype))
            elif not self.slices[name]:
                weight.copy_((scale[:, None] * (weight + delta)).to(weight.dtype))
            else:
                offset = 0
                for start, end in self.slices[name].values():
                    rows = scale[offset : offset + end - start, None]
                    weight[start:end] = (rows * (weight[start:end] + delta[start:end])).to(weight.dtype)
                    offset += end - start
        self.merged_adapter = name

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self.active  # None in a mixed batch, whose rows LoraLayer.forward hands to adapted_rows
        if name is None or name not in self.lora_magnitude_vector:
            return super().forward(x, *args, **kwargs)
        if not args and not kwargs and type(self.base_layer).forward is nn.Linear.forward:
            return self._rescale_in_place(x, name)
        base = self._base()
        if base.bias is not None and not args and not kwargs and type(self.base_layer).forward is nn.Conv2d.forward:
            # The base product without its bias: the bias is then added back as a constant, so
            # the backward pass skips reducing the gradient of (1 - scale) * bias over the batch.
            return self._rescaled(name, x, cast(nn.Conv2d, base)._conv_forward(x, base.weight, None), bias_free=True)
        return self._rescaled(name, x, self.base_layer(x, *args, **kwargs), bias_free=False)

    def adapted_rows(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Adapter ``name``'s output for inputs ``x`` whose base output (with bias) is ``out``."""
        if name not in self.lora_magnitude_vector:
            return super().adapted_rows(name, x, out)
        return self._rescaled(name, x, out, bias_free=False)

    def _rescaled(self, name: str, x: torch.Tensor, out: torch.Tensor, bias_free: bool) -> torch.Tensor:
        """``m / ||W + dW||_c * (W x + dW x) + bias`` from the base output ``out`` (``bias_free``: without its bias)."""
        base = self._base()
        bias = base.bias
        scale = self.dora_scale(name)
        dropped = self.lora_dropout[name](x)
        scaling = self.scaling[name]
        if isinstance(base, nn.Conv2d):
            scale = scale.view(-1, 1, 1)
            bias = bias.view(-1, 1, 1) if bias is not None else None
        if not self.slices[name]:
            update = self.lora_B[name](self.lora_A[name](dropped))
            return _rescale(out, update, scaling, scale, bias, bias_free)
        result = (
            out + bias if bias_free and bias is not None else out
        )  # the rows outside the slices, as the base computes them
        offset = 0
        for slice_name, (start, end) in self.slices[name].items():
            a, b = self._factors(name, slice_name)
            update = b(a(dropped))
            rows = scale[offset : offset + end - start]
            part_bias = bias[start:end] if bias is not None else None
            result[..., start:end] = _rescale(out[..., start:end], update, scaling, rows, part_bias, bias_free)
            offset += end - start
        return result

    def _rescale_in_place(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """A plain Linear base: ``W x`` of 2-D tokens is computed once, without the bias, and every
        adapted column range is rescaled in place (see _DoraColumnsInPlace), so no full-width
        update, sum or copy is made for the slices of a fused projection."""
        base = cast(nn.Linear, self.base_layer)
        tokens = x.reshape(-1, x.shape[-1])
        out = F.linear(tokens, base.weight)
        low_rank_input = self.lora_dropout[name](tokens)
        bounds = self.slices[name]
        if bounds:
            a_parts, b_parts = zip(*(self._factor_weights(name, slice_name) for slice_name in bounds))
            a, columns = torch.cat(a_parts), tuple(bounds.values())
        else:
            a, b = self._factor_weights(name)
            b_parts, columns = (b,), ((0, out.shape[-1]),)
        low_rank = F.linear(low_rank_input, a) * self.scaling[name]
        out = _DoraColumnsInPlace.apply(out, low_rank, self.dora_scale(name), base.bias, columns, *b_parts)
        return out.view(*x.shape[:-1], out.shape[-1])


class DoraMultiheadAttention(LoraMultiheadAttention):
    """DoRA on slices of ``nn.MultiheadAttention.in_proj_weight``: the module multiplies by that
    weight inside ``F.multi_head_attention_forward``, so it is called with the adapted weight."""

    adapter_groups = DoraLayer.adapter_groups

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_magnitude_vector = nn.ParameterDict()

    def add_adapter(self, name: str, config: LoraConfig, slices: tuple[str, ...] | None) -> None:
        super().add_adapter(name, config, slices)
        if isinstance(config, DoraConfig):
            self.lora_magnitude_vector[name] = nn.Parameter(self.weight_norm(name).clone())

    def weight_norm(self, name: str) -> torch.Tensor:
        """``||W + dW||_c`` of the adapted rows, in slice order, without gradient."""
        return cached_norm(self, name, self._weight_norm)

    def _weight_norm(self, name: str) -> torch.Tensor:
        with torch.no_grad():
            adapted = self._attention().in_proj_weight + self.delta_weight(name)
            return torch.cat([adapted[start:end].norm(dim=1) for start, end in self.slices[name].values()])

    def adapted_weight(self, name: str) -> torch.Tensor:
        """``in_proj_weight`` with each adapted row replaced by ``m * (W + dW) / ||W + dW||_c``."""
        weight = self._attention().in_proj_weight
        adapted = weight + self.delta_weight(name)
        scale = self.lora_magnitude_vector[name] / self.weight_norm(name)
        rows, offset, position = [], 0, 0
        for start, end in self.slices[name].values():
            rows += [weight[position:start], adapted[start:end] * scale[offset : offset + end - start, None]]
            offset, position = offset + end - start, end
        rows.append(weight[position:])
        return torch.cat(rows)

    def merge(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            return super().merge(name)
        with torch.no_grad():
            adapted = self.adapted_weight(name)
            self._keep_original("base_layer.in_proj_weight").copy_(adapted)
        self.merged_adapter = name

    def adapted_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """What the module is called with under adapter ``name`` (LoraMultiheadAttention.forward calls it)."""
        if name not in self.lora_magnitude_vector:
            return super().adapted_tensors(name)
        return {innermost_path(self.base_layer, "in_proj_weight"): self.adapted_weight(name)}


def cached_norm(layer: LoraLayer, name: str, compute) -> torch.Tensor:
    """``compute(name)``, kept while nothing it reads has changed, when gradients are off.

    Without gradient (inference, ``zoo serve``'s mixed batches) the weights stay put from batch to
    batch, and ``||W + dW||_c`` (an ``out x r x in`` product per adapter and layer) would otherwise
    be most of what an unmerged DoRA adds to a forward. The key is the storage and in-place version
    counter of every tensor it reads (the base layer's and the adapter's factors), plus the scaling:
    an optimizer step, ``load_state_dict``, a merge or any in-place write moves a version. (A write
    through ``.data`` moves none; with gradients on nothing is kept, so training never reads it.)"""
    if torch.is_grad_enabled():
        layer.__dict__.pop("_norm_cache", None)
        return compute(name)
    tensors = [*layer.base_layer.parameters(), *layer.lora_A[name].parameters(), *layer.lora_B[name].parameters()]
    try:
        key = (tuple((t.data_ptr(), t._version) for t in tensors), layer.scaling[name])
    except RuntimeError:  # tensors made under inference_mode keep no version counter: nothing to key on
        return compute(name)
    cache = layer.__dict__.setdefault("_norm_cache", {})
    if name in cache and cache[name][0] == key:
        return cache[name][1]
    cache[name] = (key, compute(name))
    return cache[name][1]


class _DoraColumnsInPlace(torch.autograd.Function):
    """DoRA's output from the bias-free base product ``out = W x``, written into ``out`` in place:

        out[:, cols] = scale[rows] * (out[:, cols] + low_rank[:, ranks] @ B.T) + bias[cols]

    for each column range and its B (``low_rank``: every range's rank-r activations side by
    side, already multiplied by the LoRA scaling; ``scale``: ``m / ||W + dW||_c`` of the adapted
    columns in range order); the other columns get their bias only. Backward makes one
    full-width tensor, the gradient of ``W x`` (the incoming gradient times ``scale`` in the
    adapted columns), and reads the rest from views.
    """

    @staticmethod
    def forward(ctx, out, low_rank, scale, bias, columns, *b_weights):
        # Under autocast ``out`` and ``low_rank`` may be bf16 and B fp32: compute in out's dtype.
        low_rank = low_rank.to(out.dtype)
        rescaled, offset, position, ranks = [], 0, 0, 0
        for (start, end), b in zip(columns, b_weights):
            rank = b.shape[1]
            if bias is not None and position < start:
                out[:, position:start] += bias[position:start]
            # W x + s B A x of these columns, kept for the gradient of the magnitude
            summed = torch.addmm(out[:, start:end], low_rank[:, ranks : ranks + rank], b.t().to(out.dtype))
            rows = scale[offset : offset + end - start]
            if bias is None:
                torch.mul(summed, rows, out=out[:, start:end])
            else:
                torch.addcmul(bias[start:end], summed, rows, out=out[:, start:end])
            rescaled.append(summed)
            offset, position, ranks = offset + end - start, end, ranks + rank
        if bias is not None and position < out.shape[1]:
            out[:, position:] += bias[position:]
        ctx.mark_dirty(out)
        ctx.save_for_backward(low_rank, scale, *b_weights, *rescaled)
        ctx.columns, ctx.has_bias = columns, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        columns = ctx.columns
        low_rank, scale, *rest = ctx.saved_tensors
        b_weights, rescaled = rest[: len(columns)], rest[len(columns) :]
        grad = grad.reshape(-1, grad.shape[-1])
        column_scale = torch.ones(grad.shape[1], dtype=grad.dtype, device=grad.device)
        low_rank = low_rank.to(grad.dtype)
        offset = 0
        for start, end in columns:
            column_scale[start:end] = scale[offset : offset + end - start]
            offset += end - start
        grad_out = grad * column_scale
        grad_low, grad_b, grad_scale, ranks = [], [], [], 0
        for (start, end), b, summed in zip(columns, b_weights, rescaled):
            rank = b.shape[1]
            grad_slice = grad_out[:, start:end]
            if ctx.needs_input_grad[1]:
                grad_low.append(grad_slice @ b.to(grad.dtype))
            grad_b.append((low_rank[:, ranks : ranks + rank].t() @ grad_slice).t().contiguous().to(b.dtype))
            if ctx.needs_input_grad[2]:
                grad_scale.append((grad[:, start:end] * summed).sum(0).to(scale.dtype))
            ranks += rank
        return (
            grad_out,
            torch.cat(grad_low, dim=1) if grad_low else None,
            torch.cat(grad_scale) if grad_scale else None,
            grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None,
            None,
            *grad_b,
        )


def _rescale(
    out: torch.Tensor,
    update: torch.Tensor,
    scaling: float,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    bias_free: bool,
) -> torch.Tensor:
    """``scale * (out - bias + s * update) + bias`` in two fused kernels; ``bias_free``: out has no bias yet."""
    summed = torch.add(out, update, alpha=scaling)
    if bias is None:
        return summed * scale
    if bias_free:
        return torch.addcmul(bias, summed, scale)
    return torch.addcmul(bias * (1 - scale), summed, scale)


def dora_to_peft(config: LoraConfig, model: nn.Module, adapter_name: str) -> dict | None:
    return lora_to_peft(config, model, adapter_name, use_dora=True)


def dora_from_peft(peft_config: dict) -> dict | None:
    return lora_from_peft(peft_config, use_dora=True)


@register_method(
    "dora",
    DoraConfig,
    mergeable=True,
    starts_at_identity=True,
    default_targets=("query", "value"),
    peft_type="LORA",
    to_peft=dora_to_peft,
    from_peft=dora_from_peft,
)
def inject_dora(context: InjectionContext, config: DoraConfig) -> None:
    inject_lora_layers(context, config, linear_class=DoraLayer, mha_class=DoraMultiheadAttention)
