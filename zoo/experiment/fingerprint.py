"""The fingerprint of a backbone's weights: which base an adapter was trained on.

``sha256:`` + sha256 over every tensor of the backbone's state dict in sorted name order, each
as ``name``, dtype, shape and raw bytes. Two backbones share a fingerprint only when they hold
the same tensors bit for bit, so an adapter is never silently put on other weights (a
different checkpoint, another revision, or random initialisation).

The runner takes it once, from the model it is about to train (:func:`base_weights_fingerprint`:
the method's tensors left out, wrapped layers under their own names), so that publishing a run
never builds its backbone again.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from zoo.peft.engine import adapter_modules
from zoo.peft.layers import logical_path


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def backbone_fingerprint(backbone: nn.Module) -> str:
    """The fingerprint of ``backbone``'s weights (call it before an adapter is added)."""
    return state_fingerprint(backbone.state_dict())


def base_weights_fingerprint(backbone: nn.Module) -> str:
    """The fingerprint :func:`backbone_fingerprint` gives the same backbone before a method was applied:
    the adapters' own tensors are left out and a wrapped layer's weights keep the name they had
    (``q.base_layer.weight`` is ``q.weight``). Call it before training: full fine-tuning changes the
    base weights themselves."""
    adapter_prefixes = tuple(
        f"{name}.{group}." if name else f"{group}."
        for name, module in adapter_modules(backbone)
        for group in module.adapter_groups
    )
    state = {}
    for key, tensor in backbone.state_dict().items():
        if key.startswith(adapter_prefixes):  # the groups are dicts keyed by adapter name
            continue
        base_key = logical_path(key)
        if base_key in state:  # a layer wrapped twice keeps one copy of its weights
            continue
        state[base_key] = tensor
    return state_fingerprint(state)
