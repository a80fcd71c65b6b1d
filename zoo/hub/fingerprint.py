"""The fingerprint of a backbone's weights: which base an adapter was trained on.

``sha256:`` + sha256 over every tensor of the backbone's state dict in sorted name order, each
as ``name``, dtype, shape and raw bytes. Two backbones share a fingerprint only when they hold
the same tensors bit for bit, so an adapter is never silently put on other weights (a
different checkpoint, another revision, or random initialisation).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


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
