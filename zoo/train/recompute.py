"""Gradient (activation) checkpointing: keep fewer activations, recompute them in backward.

Hugging Face models switch it on themselves (``activation_checkpointing_enable``; before transformers 5.24,
``gradient_checkpointing_enable``, a deprecated alias since, to be removed in v6). Any other
model is handled through its block structure (:mod:`zoo.peft.structure`): each block's
``forward`` runs under :func:`torch.utils.checkpoint.checkpoint` while training.
"""

from __future__ import annotations

import functools
import types

from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.errors import ConfigError
from zoo.peft.engine import peft_state
from zoo.peft.structure import detect_structure

_MARK = "_zoo_recompute"


def enable_gradient_checkpointing(model: nn.Module) -> str:
    """Switch recomputation on in ``model``; returns how (for the log). Raises ConfigError if it cannot."""
    hf_models = _outermost_hf_models(model)
    if hf_models:
        for _name, module in hf_models:
            # non-reentrant: works with frozen inputs (PEFT) and keyword arguments
            if hasattr(module, "activation_checkpointing_enable"):
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
            else:
                module.gradient_checkpointing_enable(  # type: ignore[operator]  # a transformers model (hasattr above)
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        return "transformers activation checkpointing on " + ", ".join(name or "<model>" for name, _ in hf_models)
    state = peft_state(model)
    structure = state.structure if state is not None and state.structure is not None else detect_structure(model)
    blocks = structure.block_names(model) if structure is not None else []
    if structure is None or not blocks:
        raise ConfigError(
            f"train.gradient_checkpointing=true: {type(model).__name__} is not a transformers model and no "
            f"structure description finds its blocks, so there is nothing to recompute; register a structure "
            f"(zoo.peft.register_structure) or set train.gradient_checkpointing=false"
        )
    for name in blocks:
        _checkpoint_forward(model.get_submodule(name))
    return f"torch.utils.checkpoint around {len(blocks)} blocks ({structure.name})"


def _outermost_hf_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not getattr(module, "supports_gradient_checkpointing", False):
            continue
        if not hasattr(module, "activation_checkpointing_enable") and not hasattr(
            module, "gradient_checkpointing_enable"
        ):
            continue
        if any(name.startswith(outer + ".") or outer == "" for outer, _ in found):
            continue
        found.append((name, module))
    return found


def _checkpoint_forward(block: nn.Module) -> None:
    if getattr(block, _MARK, False):
        return
    if "forward" in block.__dict__:
        raise ConfigError(
            f"train.gradient_checkpointing=true: block {type(block).__name__} already has its forward replaced by "
            f"something else; set train.gradient_checkpointing=false"
        )
    # A bound method (not a closure) so that copy.deepcopy(model) binds the copy to the copied block.
    block.forward = types.MethodType(_checkpointed_forward, block)
    setattr(block, _MARK, True)


def _checkpointed_forward(block: nn.Module, *args, **kwargs):
    forward = functools.partial(type(block).forward, block)
    if not block.training:
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
