"""Moving a collated batch to the device the model is on."""

from __future__ import annotations

from typing import Any

import torch


def move_to_device(value: Any, device: torch.device | str) -> Any:
    """Tensors anywhere inside dicts, lists and tuples moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: move_to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(move_to_device(item, device) for item in value)
    return value
