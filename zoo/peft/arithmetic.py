"""Adapter arithmetic (``zoo merge``): adapters of one method on one backbone, combined on their weight
updates ΔW and written back as one ordinary adapter of that method.

    >>> merged = merge_adapter_dirs(model, ["runs/a/adapter", "runs/b/adapter"], [0.5, 0.5], "ties", density=0.2)
    >>> merged.save("merged-adapter")        # loads with zoo.peft.load_adapter like any other

Each input's ΔW of an adapted layer (over the rows it adapts; every slice of a fused projection
together; ΔW = 0 where an input does not adapt a layer or slice):

- lora: ``s B A`` with ``s = lora_alpha / r`` (rsLoRA: ``lora_alpha / √r``).
- dora: the whole change of the effective weight, magnitude included: ``diag(g)(W + s B A) − W`` with
  the row scale ``g = m / ||W + s B A||_c``.
- ia3: ``diag(l − 1) W`` (input columns for feed-forward layers, where inputs must agree). Only
  ``linear`` applies: its result is the vector ``1 + Σ w_i (l_i − 1)``, exactly.

The rules that combine them are :mod:`zoo.peft.task_vectors`'s. The result is written back as:

- lora: rank ``R``, ``lora_alpha = R`` (scale 1), each layer (each slice) factored by truncated SVD.
- dora: ``W + ΔW`` as ``diag(G)(W + D)``, so ``D`` is low rank and the magnitude is ``G ||W + D||_c``.
  For linear and svd ``G = 1 + Σ w_i (g_i − 1)``, which leaves ``ΔW = diag(G − 1) W + L`` with
  ``L = Σ w_i diag(g_i) s B_i A_i`` of rank at most ``Σ r_i``; for ties and dare, whose ΔW has no such
  form, ``G`` is the least-squares row scale of ``W + ΔW`` on ``W`` and ``L`` what remains. ``L`` is
  truncated to rank ``R`` and ``D = diag(1/G) L_R``.

``R`` defaults to the sum of the input ranks (svd: the largest input rank), capped at the largest
``min(rows, columns)`` among the layers (a smaller layer is written at its full rank, the rest of its
factors zero). Linear merges are then exact up to rounding; ``MergedAdapter.errors`` gives each layer's
relative Frobenius error of the written update against the combined one. Computation is in float64.

Heads (``modules_to_save``) are not arithmetic: each input's head is kept under its task name (the
adapter folder's name unless ``tasks`` says), one head per task, and :meth:`MergedAdapter.save`
writes the adapter with the head of the task asked for. Inputs must list the same heads; two inputs
of one task must have identical heads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.peft.arithmetic_layers import (
    fill_adapter,
    first_update,
    merge_ia3,
    merge_lora_layer,
    merged_rank,
    merged_targets,
    read_updates,
)
from zoo.peft.config import MethodConfig
from zoo.peft.engine import adapter_modules, apply, delete_adapter, peft_state, set_active_adapter
from zoo.peft.io import CONFIG_NAME, _copy_into_adapter, _method_and_options, adapter_tensors, read_adapter_dir
from zoo.peft.io import save_adapter as _save_adapter
from zoo.peft.layers import HeadCopy, logical_path
from zoo.peft.registry import get_method
from zoo.peft.structure import Structure
from zoo.peft.task_vectors import check_combination

MERGEABLE_METHODS = ("lora", "dora", "ia3")


def adapter_method(adapter_dir: str | os.PathLike) -> str:
    """The method of the adapter saved in ``adapter_dir`` (read from its config, nothing loaded)."""
    config, _ = read_adapter_dir(adapter_dir)
    return _method_and_options(config, str(Path(adapter_dir) / CONFIG_NAME))[0]


@dataclass
class MergedAdapter:
    """The merged adapter, on ``model`` as ``adapter_name``, with the heads it can be saved with."""

    model: nn.Module
    adapter_name: str
    method: str
    combination: str
    rank: int | None
    """The rank written (lora and dora); None for ia3."""
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """Task name -> that task's head tensors, as saved; empty when the inputs train no head."""
    errors: dict[str, float] = field(default_factory=dict)
    """Layer path -> relative Frobenius error of the written update against the combined one."""
    task: str | None = None
    """Whose head the model carries now."""

    @property
    def config(self) -> MethodConfig:
        """The merged adapter's options, as a run's ``config.yaml`` states them under ``method``."""
        state = peft_state(self.model)
        if state is None or self.adapter_name not in state.adapters:
            raise ConfigError(f"the model no longer holds the merged adapter {self.adapter_name!r}")
        return state.adapters[self.adapter_name].config

    @property
    def shared_head(self) -> bool:
        """One head answers for every task: no head, or the same head tensors for all."""
        heads = list(self.heads.values())
        return all(_same_tensors(heads[0], other) for other in heads[1:]) if heads else True

    def use_head(self, task: str) -> None:
        if task not in self.heads:
            raise ConfigError(f"no head for task {task!r}; this merge has heads for: {', '.join(self.heads)}")
        _install_head(self.model, self.adapter_name, get_method(self.method).peft_key_prefix, self.heads[task])
        self.task = task

    def save(self, adapter_dir: str | os.PathLike, task: str | None = None) -> Path:
        """An ordinary adapter directory: the merged update and the head of ``task`` (needed when the
        tasks' heads differ: one directory per task)."""
        if task is None and not self.shared_head:
            raise ConfigError(
                f"the merged adapter has one head per task ({', '.join(self.heads)}); save one directory per task "
                f"with save(dir, task=...)"
            )
        if task is not None and task != self.task:
            self.use_head(task)
        return _save_adapter(self.model, adapter_dir, self.adapter_name)


def check_merge(
    adapter_dirs: Sequence[str | os.PathLike],
    weights: Sequence[float],
    combination: str,
    density: float | None = None,
    rank: int | None = None,
) -> str:
    """The adapters' common method, after refusing what cannot be merged (reads only the adapter files)."""
    check_combination(combination, list(weights), len(adapter_dirs), density)
    methods = [adapter_method(d) for d in adapter_dirs]
    method = methods[0]
    if any(m != method for m in methods):
        listed = ", ".join(f"{Path(d)} ({m})" for d, m in zip(adapter_dirs, methods))
        raise ConfigError(f"adapters of different methods cannot be merged: {listed}")
    if method not in MERGEABLE_METHODS:
        raise ConfigError(
            f"{method} adapters cannot be merged: zoo merge combines weight updates, which "
            f"{', '.join(MERGEABLE_METHODS)} make; {method} adds computation of its own"
        )
    if method == "ia3" and (combination != "linear" or rank is not None):
        raise ConfigError(
            "ia3 merges with method linear only, and without a rank: its updates are scaling vectors, which "
            "a linear combination keeps exact; trimming, dropping or a rank has no meaning for them"
        )
    if rank is not None and rank < 1:
        raise ConfigError(f"rank={rank} is not allowed; the merged adapter's rank must be an integer >= 1")
    return method


def merge_adapter_dirs(
    model: nn.Module,
    adapter_dirs: Sequence[str | os.PathLike],
    weights: Sequence[float],
    combination: str = "linear",
    *,
    density: float | None = None,
    rank: int | None = None,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    structure: Structure | str | None = None,
    adapter_name: str = "merged",
) -> MergedAdapter:
    """Merge the adapters saved in ``adapter_dirs`` (one method, made on ``model``'s backbone) into adapter
    ``adapter_name`` of ``model``, active when this returns. ``seed`` seeds the dare drop masks."""
    method = check_merge(adapter_dirs, weights, combination, density, rank)
    tasks = list(tasks) if tasks is not None else [_folder_task(d) for d in adapter_dirs]
    if len(tasks) != len(adapter_dirs):
        raise ConfigError(f"{len(tasks)} task name(s) for {len(adapter_dirs)} adapter(s)")
    names = [f"{adapter_name}_input{i}" for i in range(len(adapter_dirs))]
    loaded: list[str] = []
    head_lists, head_tensors = [], []
    try:
        for directory, name in zip(adapter_dirs, names):
            input_heads, input_head_tensors = _load_body(model, directory, name, structure)
            loaded.append(name)
            head_lists.append(input_heads)
            head_tensors.append(input_head_tensors)
        state = peft_state(model)
        structure = structure or (state.structure if state else None)
        ranks = [getattr(state.adapters[n].config, "r", 0) for n in names] if state else []
        layers = read_updates(model, names)
    finally:
        for name in loaded:
            delete_adapter(model, name)
    heads = _heads_by_task(adapter_dirs, tasks, head_lists, head_tensors)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    errors: dict[str, float] = {}
    written_rank: int | None = None
    if method == "ia3":
        tensors = merge_ia3(layers, list(weights))
        feedforward = sorted(path for path, (_, updates) in layers.items() if first_update(updates).feedforward)
        options: dict[str, Any] = {"feedforward_modules": feedforward}
    else:
        written_rank = merged_rank(layers, ranks, combination, rank)
        generator = torch.Generator().manual_seed(seed) if combination.startswith("dare") else None
        for path in sorted(layers):  # dare draws its masks in this order
            tensors[path], errors[path] = merge_lora_layer(
                layers[path], list(weights), combination, density, generator, written_rank, method == "dora"
            )
        options = {"r": written_rank, "lora_alpha": written_rank}
    targets = merged_targets(layers)
    apply(
        model,
        method,
        adapter_name,
        structure=structure,
        target_modules=targets,
        modules_to_save=head_lists[0],
        **options,
    )
    fill_adapter(model, adapter_name, tensors)
    merged = MergedAdapter(model, adapter_name, method, combination, written_rank, heads, errors)
    if heads:
        merged.use_head(tasks[0])
    return merged


# -- inputs ------------------------------------------------------------------------------
def _folder_task(adapter_dir: str | os.PathLike) -> str:
    path = Path(adapter_dir).resolve()
    return path.parent.name if path.name == "adapter" else path.name


def _load_body(
    model: nn.Module, adapter_dir: str | os.PathLike, name: str, structure: Structure | str | None
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Add the adapter without its heads (their sizes may differ between tasks); return the head names
    and the head tensors, as saved."""
    config, tensors = read_adapter_dir(adapter_dir)
    method, options, _ = _method_and_options(config, str(Path(adapter_dir) / CONFIG_NAME))
    present = {n for n, _ in model.named_modules()}
    heads = [h for h in options.get("modules_to_save") or [] if any(n == h or n.endswith("." + h) for n in present)]
    apply(model, method, name, structure=structure, **{**options, "modules_to_save": []})
    body = set(adapter_tensors(model, name))
    try:
        _copy_into_adapter(model, name, {k: v for k, v in tensors.items() if k in body}, adapter_dir)
    except Exception:
        delete_adapter(model, name)
        raise
    return heads, {k: v for k, v in tensors.items() if k not in body}


# -- heads ------------------------------------------------------------------------------
def _same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(
        first[k].shape == second[k].shape and torch.equal(first[k], second[k]) for k in first
    )


def _heads_by_task(
    adapter_dirs: Sequence[str | os.PathLike],
    tasks: list[str],
    head_lists: list[list[str]],
    head_tensors: list[dict[str, torch.Tensor]],
) -> dict[str, dict[str, torch.Tensor]]:
    if any(sorted(h) != sorted(head_lists[0]) for h in head_lists):
        listed = "; ".join(f"{Path(d)}: {h or 'none'}" for d, h in zip(adapter_dirs, head_lists))
        raise ConfigError(f"the adapters train different heads (modules_to_save), so no one head list fits: {listed}")
    if not head_lists[0]:
        return {}
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for directory, task, tensors in zip(adapter_dirs, tasks, head_tensors):
        if task in heads and not _same_tensors(heads[task], tensors):
            raise ConfigError(
                f"two adapters of task {task!r} ({Path(directory)} and an earlier one) have different heads; a merged "
                f"adapter keeps one head per task, so merge adapters of different tasks or with identical heads"
            )
        heads.setdefault(task, tensors)
    return heads


def _install_head(model: nn.Module, adapter_name: str, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the merged adapter's head copies by ``tensors`` (saved names; their shapes may differ)."""
    used = set()
    for module_name, module in adapter_modules(model):
        if not isinstance(module, HeadCopy) or not module.has_adapter(adapter_name):
            continue
        start = f"{prefix}{logical_path(module_name)}."
        head = module.modules_to_save[adapter_name]
        for key in [k for k in tensors if k.startswith(start)]:
            owner_path, _, leaf = key[len(start) :].rpartition(".")
            owner = head.get_submodule(owner_path) if owner_path else head
            old = owner._parameters.get(leaf)
            if old is not None:
                owner._parameters[leaf] = nn.Parameter(tensors[key].to(old.device, old.dtype).clone())
            elif leaf in owner._buffers:
                owner._buffers[leaf] = tensors[key].clone()
            else:
                raise ConfigError(f"head tensor {key} names nothing in the head {logical_path(module_name)}")
            used.add(key)
    unused = sorted(set(tensors) - used)
    if unused:
        raise ConfigError(f"head tensor(s) {', '.join(unused[:5])} belong to no head of this model")
    set_active_adapter(model, adapter_name)  # what trains follows the new tensors
