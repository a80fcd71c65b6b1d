"""Injecting PEFT methods into any ``nn.Module`` and managing named adapters.

``apply(model, "lora", r=8)`` adds adapter ``"default"``, freezes everything else and
returns the same model object. Several adapters can live on one model; exactly one is
active (its tensors are the trainable ones) or all are disabled, in which case the model
computes exactly what the base model computes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

from torch import nn

from zoo.peft.block_selection import select_blocks
from zoo.peft.config import ConfigError, MethodConfig
from zoo.peft.layers import AdapterModule, HeadCopy, replace_module
from zoo.peft.registry import MethodSpec, get_method, list_methods
from zoo.peft.structure import Structure, detect_structure, get_structure
from zoo.peft.targeting import Target, candidate_names, resolve_targets

STATE_ATTRIBUTE = "zoo_peft_state"
DEFAULT_ADAPTER = "default"

W = TypeVar("W", bound=AdapterModule)


@dataclass
class AdapterRecord:
    method: str
    config: MethodConfig


@dataclass
class PeftState:
    adapters: dict[str, AdapterRecord] = field(default_factory=dict)
    active: str | None = None
    enabled: bool = True
    structure: Structure | None = None


def peft_state(model: nn.Module) -> PeftState | None:
    return model.__dict__.get(STATE_ATTRIBUTE)


def _state_or_error(model: nn.Module) -> PeftState:
    state = peft_state(model)
    if state is None or not state.adapters:
        raise ConfigError("this model has no zoo adapter; add one with zoo.peft.apply(model, method, ...)")
    return state


@dataclass
class InjectionContext:
    """What a method's ``inject`` function gets: the model, the adapter name, the structure."""

    model: nn.Module
    adapter_name: str
    structure: Structure | None
    method: str
    layers: list[int] | str | None = None
    """The method's ``layers`` option: which blocks ``targets`` and ``block_names`` keep."""
    layers_applied: bool = False

    def require_structure(self) -> Structure:
        if self.structure is None:
            raise ConfigError(
                f"{self.method} needs to know where the blocks, attention and FFN of "
                f"{type(self.model).__name__} are, and no structure description fits it. Pass "
                f"structure=... (known: hf-bert, timm-vit and those registered by domain packages) "
                f"or register one with zoo.peft.register_structure"
            )
        return self.structure

    def targets(self, config: MethodConfig, allowed: tuple[type[nn.Module], ...] = (nn.Linear,)) -> list[Target]:
        patterns = config.target_modules if config.target_modules is not None else self.default_targets()
        targets = resolve_targets(self.model, patterns, self.method, allowed)
        if self.layers is None:
            return targets
        kept = tuple(block + "." for block in self.block_names())
        selected = [target for target in targets if target.name.startswith(kept)]
        if not selected:
            raise ConfigError(f"{self.method}: layers={self.layers} keeps none of the targets ({targets[0].name}, ...)")
        return selected

    def default_targets(self) -> list[str] | str | None:
        """Where the structure puts the roles the method registered as its default targets."""
        roles = get_method(self.method).default_targets
        return self.structure.targets_for(roles) if self.structure is not None and roles else None

    def wrap(self, target_name: str, wrapper_class: type[W], factory: Callable[[nn.Module], W]) -> W:
        """The wrapper of ``wrapper_class`` at ``target_name``, created on first use."""
        module = self.model.get_submodule(target_name)
        if isinstance(module, wrapper_class):
            return module
        wrapper = factory(module)
        replace_module(self.model, target_name, wrapper)
        return wrapper

    def block_names(self, selectable: bool = True) -> list[str]:
        """The structure's blocks that ``layers`` selects; ``selectable=False`` for methods that must see
        every block (prompts and prefixes thread through all of them)."""
        structure = self.require_structure()
        blocks = structure.block_names(self.model)
        if not blocks:
            raise ConfigError(f"{self.method}: no block of {type(self.model).__name__} matches {structure.blocks!r}")
        if self.layers is not None and not selectable:
            raise ConfigError(
                f"{self.method}: layers={self.layers} does not apply; the method goes through every block"
            )
        self.layers_applied = True
        return select_blocks(self.method, self.layers, blocks)


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, AdapterModule]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterModule):
            yield name, module


def _resolve_structure(model: nn.Module, structure: Structure | str | None) -> Structure | None:
    if isinstance(structure, str):
        return get_structure(structure)
    return structure if structure is not None else detect_structure(model)


def apply(
    model: nn.Module,
    method: str,
    adapter_name: str = DEFAULT_ADAPTER,
    structure: Structure | str | None = None,
    **options: Any,
) -> nn.Module:
    """Inject ``method`` as adapter ``adapter_name``, make it the active one, and return ``model``.

    Options come as keywords (``r=8``), checked here, or as a config object already checked
    (``config=LoraConfig(r=8)``, or the ``method`` of a run configuration), taken as it is."""
    spec = get_method(method)
    config = options.pop("config", None)
    if config is None:
        config = spec.config_class.from_options(options)
    elif options or not isinstance(config, spec.config_class) or config.name != method:
        raise ConfigError(f"{method}: pass either config=<{spec.config_class.__name__}> or keyword options, not both")
    else:
        # the adapter keeps its own copy: injecting fills in defaults (the head) that are not the caller's
        config = config.model_copy()
    if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
        raise ConfigError(f"adapter_name={adapter_name!r} must be a Python identifier, e.g. 'default'")
    state = peft_state(model)
    if state is None:
        state = PeftState()
        model.__dict__[STATE_ATTRIBUTE] = state
    if adapter_name in state.adapters:
        raise ConfigError(
            f"an adapter named {adapter_name!r} already exists on this model "
            f"(existing: {', '.join(state.adapters)}); pass another adapter_name or delete_adapter() it first"
        )
    if any(get_method(r.method).trains_base for r in state.adapters.values()) or (spec.trains_base and state.adapters):
        raise ConfigError("full fine-tuning changes the base weights and cannot share a model with other adapters")
    resolved = _resolve_structure(model, structure)
    context = InjectionContext(
        model=model, adapter_name=adapter_name, structure=resolved, method=method, layers=config.layers
    )
    try:
        spec.inject(context, config)
        if config.layers is not None and not context.layers_applied:
            raise ConfigError(
                f"{method}: layers={config.layers} does not apply; the method does not work block by block"
            )
        _add_heads(context, config)
    except Exception:
        _remove_adapter_modules(model, adapter_name)
        raise
    state.structure = state.structure or resolved
    state.adapters[adapter_name] = AdapterRecord(method=method, config=config)
    set_active_adapter(model, adapter_name)
    return model


def _add_heads(context: InjectionContext, config: MethodConfig) -> None:
    heads = config.modules_to_save
    if heads is None:
        heads = context.structure.head_names(context.model) if context.structure else []
        config.modules_to_save = list(heads)
    for head in heads:
        matches = [n for n, _ in context.model.named_modules() if n == head or n.endswith("." + head)]
        matches = [n for n in matches if ".modules_to_save." not in n and not n.endswith(".original_module")]
        if not matches:
            raise ConfigError(
                f"modules_to_save entry {head!r} matches no module; candidates: "
                f"{', '.join(candidate_names(context.model, (nn.Linear, nn.Sequential)))}"
            )
        for name in matches:
            wrapper = context.wrap(name, HeadCopy, HeadCopy)
            wrapper.add_adapter(context.adapter_name)


def _remove_adapter_modules(model: nn.Module, adapter_name: str) -> None:
    for name, module in reversed(list(adapter_modules(model))):
        if module.has_adapter(adapter_name):
            module.delete_adapter(adapter_name)
        if not module.adapter_names():
            module.remove_hooks()
            replacement = module.unwrap()
            if replacement is not None:
                replace_module(model, name, replacement)
            elif name:
                _delete_child(model, name)


def _delete_child(model: nn.Module, name: str) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    delattr(parent, child)


def _refresh_trainable(model: nn.Module) -> None:
    state = _state_or_error(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if not state.enabled or state.active is None:
        return
    if get_method(state.adapters[state.active].method).trains_base:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    for _, module in adapter_modules(model):
        for parameter in module.adapter_parameters(state.active):
            parameter.requires_grad_(True)


def set_active_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the adapter that computes and trains; enables adapters."""
    state = _state_or_error(model)
    if adapter_name not in state.adapters:
        raise ConfigError(f"no adapter named {adapter_name!r}; adapters on this model: {', '.join(state.adapters)}")
    if any(m.merged_adapter not in (None, adapter_name) for _, m in adapter_modules(model)):
        raise ConfigError("another adapter is merged into the weights; call zoo.peft.unmerge(model) first")
    state.active = adapter_name
    state.enabled = True
    for _, module in adapter_modules(model):
        module.set_active(adapter_name)
    _refresh_trainable(model)


def active_adapter(model: nn.Module) -> str | None:
    state = peft_state(model)
    return state.active if state and state.enabled else None


def list_adapters(model: nn.Module) -> dict[str, str]:
    """Adapter name -> method name."""
    state = peft_state(model)
    return {name: record.method for name, record in state.adapters.items()} if state else {}


def disable_adapters(model: nn.Module) -> None:
    """Compute exactly the base model: every adapter is bypassed."""
    state = _state_or_error(model)
    for name, record in state.adapters.items():
        if get_method(record.method).trains_base:
            raise ConfigError(
                f"adapter {name!r} is full fine-tuning: it changed the base weights in place, so there is no "
                f"base model to fall back to; reload the backbone for base outputs"
            )
    if any(m.merged_adapter is not None for _, m in adapter_modules(model)):
        raise ConfigError("an adapter is merged into the base weights; call zoo.peft.unmerge(model) before disabling")
    state.enabled = False
    for _, module in adapter_modules(model):
        module.set_active(None)
    _refresh_trainable(model)


def enable_adapters(model: nn.Module) -> None:
    state = _state_or_error(model)
    if state.active is not None:
        set_active_adapter(model, state.active)


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``with disabled(model): base_out = model(x)``."""
    disable_adapters(model)
    try:
        yield model
    finally:
        enable_adapters(model)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    state = _state_or_error(model)
    if adapter_name not in state.adapters:
        raise ConfigError(f"no adapter named {adapter_name!r}; adapters on this model: {', '.join(state.adapters)}")
    if get_method(state.adapters[adapter_name].method).trains_base:
        raise ConfigError("full fine-tuning changed the base weights in place; it cannot be deleted")
    _remove_adapter_modules(model, adapter_name)
    del state.adapters[adapter_name]
    if state.active == adapter_name:
        state.active = next(iter(state.adapters), None)
    if state.active is not None:
        set_active_adapter(model, state.active)
    elif not state.adapters:
        model.__dict__.pop(STATE_ATTRIBUTE, None)
        for parameter in model.parameters():
            parameter.requires_grad_(True)


def _mergeable_spec(model: nn.Module, adapter_name: str | None) -> tuple[str, MethodSpec]:
    state = _state_or_error(model)
    name = adapter_name or state.active
    if name not in state.adapters:
        raise ConfigError(f"no adapter named {name!r}; adapters on this model: {', '.join(state.adapters)}")
    spec = get_method(state.adapters[name].method)
    if not spec.mergeable:
        reason = spec.merge_refusal or "adds computation that cannot be folded into the base weights"
        raise ConfigError(
            f"adapter {name!r} uses {spec.name}, which {reason}; "
            f"merge works for {', '.join(m for m in list_methods() if get_method(m).mergeable)}"
        )
    return name, spec


def merge(model: nn.Module, adapter_name: str | None = None) -> None:
    """Fold the adapter's update into the base weights; the original weights are kept for unmerge."""
    name, _ = _mergeable_spec(model, adapter_name)
    set_active_adapter(model, name)
    for _, module in adapter_modules(model):
        if module.has_adapter(name) and not isinstance(module, HeadCopy) and module.merged_adapter is None:
            module.merge(name)
    _refresh_trainable(model)


def unmerge(model: nn.Module) -> None:
    """Restore the original base weights bit for bit."""
    _state_or_error(model)
    for _, module in adapter_modules(model):
        module.unmerge()
    _refresh_trainable(model)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter and remove every zoo module: a plain model with the same outputs."""
    state = _state_or_error(model)
    if state.active is not None:
        merge(model, state.active)
    return _unload(model, keep_heads=True)


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: the base model again."""
    return _unload(model, keep_heads=False)


def _unload(model: nn.Module, keep_heads: bool) -> nn.Module:
    state = _state_or_error(model)
    active = state.active if state.enabled else None
    for name, module in reversed(list(adapter_modules(model))):
        replacement: nn.Module | None  # None: the wrapper is removed with nothing in its place
        if isinstance(module, HeadCopy) and keep_heads and active is not None and active in module.modules_to_save:
            replacement = module.modules_to_save[active]
        else:
            module.remove_hooks()
            replacement = module.unwrap()
        module._unmerged_copies.clear()
        if replacement is None:
            _delete_child(model, name)
        else:
            replace_module(model, name, replacement)
    model.__dict__.pop(STATE_ATTRIBUTE, None)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
