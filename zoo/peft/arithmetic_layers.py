"""The per-layer half of adapter arithmetic (:mod:`zoo.peft.arithmetic`): each input's update of each
adapted layer, read through the method's own layer (``delta_weight``, ``weight_norm``,
``scale_vector``), combined by :mod:`zoo.peft.task_vectors`, and the merged layer's tensors.

Updates are 2-D float64 over the rows of the base weight (a conv kernel flattened per output channel).
A layer's rows are those some input adapts (all of a fused projection's slices together); an input
that does not adapt a layer or a slice contributes ΔW = 0 there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.peft.dora import DoraLayer, DoraMultiheadAttention
from zoo.peft.engine import adapter_modules
from zoo.peft.ia3 import IA3Layer
from zoo.peft.layers import HeadCopy, logical_path
from zoo.peft.lora import LoraLayer
from zoo.peft.targeting import FUSED_SLICE_NAMES, base_of
from zoo.peft.task_vectors import combine, low_rank_factors

Bounds = dict[str, tuple[int, int]]
"""Rows of a fused projection's slices, by slice name; empty: the whole layer."""


@dataclass
class Update:
    """One input's update of one layer, as 2-D float64 tensors over all rows of the base weight."""

    bounds: Bounds
    delta: torch.Tensor | None = None
    """ΔW (lora, dora)."""
    row_scale: torch.Tensor | None = None
    """dora's m / ||W + s B A||_c (1 outside the adapted rows)."""
    low_rank: torch.Tensor | None = None
    """dora's s B A."""
    vector: torch.Tensor | None = None
    """ia3's scale per row (per input column when ``feedforward``), 1 outside the adapted rows."""
    feedforward: bool = False


Layer = tuple[nn.Module, list[Update | None]]


def _base_weight(layer: nn.Module) -> torch.Tensor:
    weight_name = getattr(layer, "weight_name", "weight")
    return getattr(base_of(layer.base_layer), weight_name).detach().flatten(1).double()  # type: ignore[arg-type]


def _read_update(layer: nn.Module, name: str) -> Update:
    if isinstance(layer, IA3Layer):
        vector = layer.scale_vector(name).detach().double()
        return Update(dict(layer.slices[name]), vector=vector, feedforward=layer.is_feedforward[name])
    if not isinstance(layer, LoraLayer):
        raise ConfigError(f"{type(layer).__name__} holds no weight update that zoo merge can read")
    bounds = dict(layer.slices[name])
    low_rank = layer.delta_weight(name).detach().flatten(1).double()
    if not isinstance(layer, (DoraLayer, DoraMultiheadAttention)) or name not in layer.lora_magnitude_vector:
        return Update(bounds, delta=low_rank)
    weight = _base_weight(layer)
    with torch.no_grad():
        scale = (layer.lora_magnitude_vector[name].flatten() / layer.weight_norm(name).flatten()).double()
    row_scale = torch.ones(weight.shape[0], dtype=torch.float64)
    row_scale[_rows(bounds, weight.shape[0])] = scale
    delta = row_scale[:, None] * (weight + low_rank) - weight
    return Update(bounds, delta=delta, row_scale=row_scale, low_rank=low_rank)


def read_updates(model: nn.Module, names: list[str]) -> dict[str, Layer]:
    layers: dict[str, Layer] = {}
    for module_name, module in adapter_modules(model):
        if isinstance(module, HeadCopy):
            continue
        updates = [_read_update(module, n) if module.has_adapter(n) else None for n in names]
        if any(u is not None for u in updates):
            layers[logical_path(module_name)] = (module, updates)
    if not layers:
        raise ConfigError("the adapters adapt no layer: there is nothing to merge")
    return layers


def first_update(updates: list[Update | None]) -> Update:
    return next(u for u in updates if u is not None)


def _rows(bounds: Bounds, out_rows: int) -> torch.Tensor:
    if not bounds:
        return torch.arange(out_rows)
    return torch.cat([torch.arange(start, end) for start, end in bounds.values()])


def _union(updates: list[Update | None], out_rows: int) -> Bounds:
    """The slices any input adapts (every row when one adapts the whole layer)."""
    present = [u.bounds for u in updates if u is not None]
    if any(not bounds for bounds in present):
        return {}
    size = out_rows // len(FUSED_SLICE_NAMES)  # the inputs' slices split the rows in three, q, k, v
    return {
        s: (i * size, (i + 1) * size) for i, s in enumerate(FUSED_SLICE_NAMES) if any(s in bounds for bounds in present)
    }


def merged_targets(layers: dict[str, Layer]) -> list[str]:
    targets = []
    for path, (layer, updates) in layers.items():
        out_rows = len(first_update(updates).vector) if isinstance(layer, IA3Layer) else _base_weight(layer).shape[0]  # type: ignore[arg-type]
        bounds = _union(updates, out_rows) if not first_update(updates).feedforward else {}
        targets.append(f"{path}[{','.join(bounds)}]" if bounds else path)
    return targets


# -- combining ----------------------------------------------------------------------------
def merged_rank(layers: dict[str, Layer], ranks: list[int], combination: str, rank: int | None) -> int:
    """The rank asked for, else the inputs' sum (svd: their largest), at most the largest a layer can use."""
    usable = 1
    for layer, updates in layers.values():
        weight = _base_weight(layer)
        bounds = _union(updates, weight.shape[0])
        sizes = [end - start for start, end in bounds.values()] or [weight.shape[0]]
        usable = max(usable, *(min(size, weight.shape[1]) for size in sizes))
    wanted = rank if rank is not None else (max(ranks) if combination == "svd" else sum(ranks))
    return max(1, min(wanted, usable))


def merge_lora_layer(
    layer: Layer,
    weights: list[float],
    combination: str,
    density: float | None,
    generator: torch.Generator | None,
    rank: int,
    dora: bool,
) -> tuple[dict[str, torch.Tensor], float]:
    """The merged layer's tensors (2-D, as named in the adapter) and the relative error of writing it."""
    module, updates = layer
    weight = _base_weight(module)
    bounds = _union(updates, weight.shape[0])
    rows = _rows(bounds, weight.shape[0])
    zero = torch.zeros(len(rows), weight.shape[1], dtype=torch.float64)
    deltas = [u.delta[rows] if u is not None and u.delta is not None else zero for u in updates]
    merged = combine(deltas, weights, combination, density, generator)
    scale: torch.Tensor | None = None
    residual = merged
    if dora:
        scale, residual = _dora_split(updates, weights, combination, weight[rows], merged, rows)
    tensors: dict[str, torch.Tensor] = {}
    dropped, offset, magnitudes = 0.0, 0, []
    for slice_name, (start, end) in (bounds or {"": (0, weight.shape[0])}).items():
        part = slice(offset, offset + end - start)
        b, a, lost = low_rank_factors(residual[part], rank)
        dropped += lost
        if scale is not None:
            b = b / scale[part, None]
            magnitudes.append(scale[part] * (weight[start:end] + b @ a).norm(dim=1))
        infix = f".{slice_name}" if slice_name else ""
        tensors[f"lora_A{infix}.weight"], tensors[f"lora_B{infix}.weight"] = a, b
        offset += end - start
    if magnitudes:
        tensors["lora_magnitude_vector"] = torch.cat(magnitudes)
    norm = float(merged.norm())
    return tensors, (math.sqrt(dropped) / norm if norm else 0.0)


def _dora_split(
    updates: list[Update | None],
    weights: list[float],
    combination: str,
    weight: torch.Tensor,
    merged: torch.Tensor,
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G, L)`` with ``weight + merged = diag(G) weight + L`` (see the module docstring)."""
    if combination in ("linear", "svd"):
        scale = torch.ones(len(rows), dtype=torch.float64)
        residual = torch.zeros_like(weight)
        for w, u in zip(weights, updates):
            if u is not None and u.row_scale is not None and u.low_rank is not None:
                scale += w * (u.row_scale[rows] - 1)
                residual += w * u.row_scale[rows, None] * u.low_rank[rows]
    else:
        target = weight + merged
        squared = (weight * weight).sum(1)
        scale = torch.where(squared > 0, (target * weight).sum(1) / squared.clamp(min=1e-300), 1.0)
        residual = target - scale[:, None] * weight
    if bool((scale.abs() < 1e-6).any()):
        raise ConfigError(
            "the weights cancel the magnitude of some rows (a row of the merged weight would be 0 times the base "
            "row), which a DoRA adapter cannot express; change the weights"
        )
    return scale, residual


def merge_ia3(layers: dict[str, Layer], weights: list[float]) -> dict[str, dict[str, torch.Tensor]]:
    tensors = {}
    for path, (_, updates) in layers.items():
        first = first_update(updates)
        if any(u is not None and u.feedforward != first.feedforward for u in updates):
            raise ConfigError(
                f"ia3: {path} scales its input in some adapters and its output in others (feedforward_modules "
                f"differ); those vectors do not combine"
            )
        assert first.vector is not None
        vector = torch.ones_like(first.vector)
        for w, u in zip(weights, updates):
            if u is not None and u.vector is not None:
                vector += w * (u.vector - 1)
        bounds = {} if first.feedforward else _union(updates, len(vector))
        tensors[path] = {"ia3_l": vector[_rows(bounds, len(vector))]}
    return tensors


def fill_adapter(model: nn.Module, adapter_name: str, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    for module_name, module in adapter_modules(model):
        if isinstance(module, HeadCopy) or not module.has_adapter(adapter_name):
            continue
        path = logical_path(module_name)
        own = module.adapter_state(adapter_name)
        state = tensors[path]
        if set(state) != set(own):
            raise RuntimeError(f"{path}: merged tensors {sorted(state)} do not match the layer's {sorted(own)}")
        shaped = {k: v.reshape(own[k].shape).to(own[k].dtype) for k, v in state.items()}
        module.load_adapter_state(adapter_name, shaped, path)
