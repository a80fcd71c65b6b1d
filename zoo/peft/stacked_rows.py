"""Mixed batches through a LoRA/DoRA Linear in two batched products, not one pass per adapter.

The general mixed path (zoo.peft.mixed) takes each adapter's rows out of the batch, computes its
update on them and writes them back: two copies of those rows' activations and two small products
per adapter and layer. With many adapters and few rows each (8 adapters in a batch of 8: one row
apiece) that is dozens of small operations per layer, and most of a mixed forward's extra cost.

Here the factors of every adapter a layer holds are stacked, zero-padded to the largest rank, with
the scaling folded into B and a last slot of zeros for rows of no adapter; the stack is kept until
a tensor it came from changes. A batch then gathers each row's own factors and costs the same few
operations whatever its mix, as Punica and S-LoRA do on GPUs:

    low  = bmm(x_rows, A[slot_of_row]^T)        (rows x tokens x r_max)
    out += bmm(low, B[slot_of_row]^T)

DoRA rows are then rescaled, ``out = s_i * (out - bias) + bias`` with ``s_i = m / ||W + dW||`` of
row i's adapter (1 for LoRA rows and rows of no adapter). A mask over every adapter's columns
(``x A_cat^T``, masked, times ``B_cat^T``) was slower on CPU at batches 8-128 with 8 adapters: it
computes every adapter's activations for every row. Where the products would differ from the
layer's own (gradients on, training dropout, hooks on the factors, an input-dependent scaling, a
Conv2d or a call with extra arguments) the general path runs instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from zoo.peft.lora import LoraLayer


class Stack:
    """Every held adapter's factors of one layer, padded to one rank, for rows to gather their own."""

    def __init__(self, layer: LoraLayer, names: tuple[str, ...]) -> None:
        base = cast(nn.Linear, layer._base())
        width = base.out_features
        downs, ups, scales = [], [], []
        for name in names:
            bounds: dict[str | None, tuple[int, int]] = {None: (0, width)}
            if layer.slices[name]:
                bounds = dict(layer.slices[name].items())
            a_parts, b_blocks = [], []
            for slice_name, (start, end) in bounds.items():  # slices side by side: one A, one block B
                a, b = layer._factor_weights(name, slice_name)
                block = b.new_zeros(width, a.shape[0])
                block[start:end] = b * layer.scaling[name]
                a_parts.append(a)
                b_blocks.append(block)
            downs.append(torch.cat(a_parts))
            ups.append(torch.cat(b_blocks, dim=1))
            scales.append(layer.output_scale(name))
        rank = max(a.shape[0] for a in downs)
        self.a = downs[0].new_zeros(len(names) + 1, rank, base.in_features)
        """Each slot's A (slots + 1, r_max, in); the last slot, zeros, for rows of no adapter held here."""
        self.b_t = downs[0].new_zeros(len(names) + 1, rank, width)
        """Each slot's scaled B, transposed (slots + 1, r_max, out)."""
        for slot, (a, b) in enumerate(zip(downs, ups)):
            self.a[slot, : a.shape[0]] = a
            self.b_t[slot, : a.shape[0]] = b.T
        self.scales = None
        if any(scale is not None for scale in scales):
            ones = self.a.new_ones(width)
            self.scales = torch.stack([*(ones if scale is None else scale for scale in scales), ones])


def _factor_modules(layer: LoraLayer, name: str) -> list[nn.Module]:
    """A and B of adapter ``name`` (every slice's, on a fused projection)."""
    modules: list[nn.Module] = []
    for factor in (layer.lora_A[name], layer.lora_B[name]):
        modules += factor._modules.values() if isinstance(factor, nn.ModuleDict) else [factor]
    return modules


def _stack_key(layer: LoraLayer, names: tuple[str, ...]) -> tuple | None | bool:
    """What a layer's stack is built from: the storage and version of every tensor it reads (None: tensors
    made under inference_mode, which keep no version, so nothing tells when they change); False where the
    stacked products would not be what the layer computes (hooks on a factor, training dropout).

    Read from the modules' own dicts: once per layer and batch, ``parameters()`` cost 5 % of a mixed
    forward of ViT-Tiny at batch 8."""
    base = layer.base_layer
    tensors = [t for t in base._parameters.values() if t is not None]
    magnitudes = getattr(layer, "lora_magnitude_vector", {})
    for name in names:
        dropout = layer.lora_dropout[name]
        if dropout.training and not isinstance(dropout, nn.Identity):
            return False
        for module in _factor_modules(layer, name):
            if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
                return False  # observed (Opacus): they must be called as modules
            tensors += [t for t in module._parameters.values() if t is not None]
        if name in magnitudes:
            tensors.append(magnitudes[name])
    try:
        return names, tuple((t.data_ptr(), t._version) for t in tensors), tuple(layer.scaling[n] for n in names)
    except RuntimeError:
        return None


def _stack(layer: LoraLayer, names: tuple[str, ...]) -> Stack | None:
    """The stack of ``names``, kept on the layer while every tensor it was built from is unchanged (None:
    the stacked products would not be what the layer computes)."""
    key = _stack_key(layer, names)
    if key is False:
        return None
    kept = layer.__dict__.get("_stack")
    if key is not None and kept is not None and kept[0] == key:
        return kept[1]
    stack = Stack(layer, names)
    layer.__dict__["_stack"] = (key, stack) if key is not None else None
    return stack


def _applies(layer: LoraLayer, args: tuple, kwargs: dict) -> bool:
    if not layer.stacks_rows or torch.is_grad_enabled() or args or kwargs:
        return False
    base = layer.base_layer
    if type(base).forward is not nn.Linear.forward or base._forward_hooks or base._forward_pre_hooks:
        return False
    return True


def stacked_forward(layer: LoraLayer, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The layer's output for a mixed batch through the stacked factors, or None where the general
    path must run (see the module docstring)."""
    groups = layer.row_groups
    if groups is None or not _applies(layer, args, kwargs):
        return None
    held = tuple(layer.adapter_names())
    if not held:
        return None
    base = cast(nn.Linear, layer.base_layer)
    axis = groups.axis(layer)
    groups.check(x.shape[axis], layer)
    stack = _stack(layer, held)
    if stack is None:
        return None
    slots = groups.slots(held, x.device)
    out = F.linear(x, base.weight, base.bias)
    rows = x.movedim(axis, 0)
    tokens = rows.reshape(rows.shape[0], -1, rows.shape[-1])  # (rows, tokens, in)
    low = torch.bmm(tokens, stack.a.index_select(0, slots).transpose(1, 2))
    update = torch.bmm(low, stack.b_t.index_select(0, slots)).view(*rows.shape[:-1], -1).movedim(0, axis)
    if stack.scales is None:
        return out.add_(update)
    shape = [1] * x.dim()
    shape[axis], shape[-1] = x.shape[axis], base.out_features
    scale = stack.scales.index_select(0, slots).view(shape)
    if base.bias is None:
        return out.add_(update).mul_(scale)
    # s * (W x + dW x) + bias, from out = W x + bias: rows of scale 1 come back unchanged
    return out.add_(update).sub_(base.bias).mul_(scale).add_(base.bias)


def stack_bytes(model: nn.Module, name: str) -> int:
    """The bytes that mixed batches keep for adapter ``name`` in stacked copies of its factors (at its own
    rank; a stack pads to the largest of the layer's adapters), for a server's memory bound."""
    from zoo.peft.engine import adapter_modules

    total = 0
    for _, module in adapter_modules(model):
        if getattr(module, "stacks_rows", False) and name in module.adapter_names():
            layer = cast("LoraLayer", module)
            if type(layer.base_layer).forward is nn.Linear.forward:
                for factor in _factor_modules(layer, name):
                    total += sum(t.numel() * t.element_size() for t in factor._parameters.values() if t is not None)
    return total
