"""Choosing target modules by name pattern.

Semantics follow HF PEFT so that configs carry over: a list entry matches a module
whose full name equals the entry or ends with ``"." + entry``; a plain string is a
regular expression matched against the whole name. zoo adds slice selectors for fused
projections: ``"qkv[q,v]"`` targets the q and v slices of timm's fused ``qkv`` Linear,
``"attn[q,v]"`` those of an ``nn.MultiheadAttention``'s ``in_proj_weight``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from zoo.peft.config import ConfigError

_SLICE = re.compile(r"^(?P<name>.+?)\[(?P<slices>[a-z_,\s]+)\]$")
FUSED_SLICE_NAMES = ("q", "k", "v")


@dataclass(frozen=True)
class Target:
    name: str
    module: nn.Module
    slices: tuple[str, ...] | None = None
    """For fused q/k/v projections: which slices to adapt, in q, k, v order."""


def _parse(entry: str) -> tuple[str, tuple[str, ...] | None]:
    match = _SLICE.match(entry)
    if not match:
        return entry, None
    slices = tuple(s.strip() for s in match["slices"].split(",") if s.strip())
    unknown = [s for s in slices if s not in FUSED_SLICE_NAMES]
    if unknown or not slices:
        raise ConfigError(
            f"target {entry!r}: unknown slice(s) {unknown}; slices of a fused projection are "
            f"{', '.join(FUSED_SLICE_NAMES)}, e.g. 'qkv[q,v]'"
        )
    ordered = tuple(s for s in FUSED_SLICE_NAMES if s in slices)
    return match["name"], ordered


def _skip(name: str) -> bool:
    # Never target inside zoo's own adapter modules, or the frozen original of a head copy.
    parts = name.split(".")
    return any(p.startswith("zoo_") or p in ("lora_A", "lora_B", "modules_to_save", "original_module") for p in parts)


def match_modules(model: nn.Module, patterns: list[str] | str) -> list[Target]:
    """All modules matched by ``patterns``, in model order, each once."""
    found: dict[str, Target] = {}
    named = [(n, m) for n, m in model.named_modules() if n and not _skip(n)]
    if isinstance(patterns, str):
        regex = re.compile(patterns)
        for name, module in named:
            if regex.fullmatch(name):
                found[name] = Target(name, module)
    else:
        for entry in patterns:
            pattern, slices = _parse(entry)
            for name, module in named:
                if name == pattern or name.endswith("." + pattern):
                    if name in found and found[name].slices != slices:
                        raise ConfigError(f"module {name!r} is matched twice with different slices")
                    found[name] = Target(name, module, slices)
    order = {name: i for i, (name, _) in enumerate(named)}
    return sorted(found.values(), key=lambda t: order[t.name])


def candidate_names(
    model: nn.Module, kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
) -> list[str]:
    """Distinct last name segments of modules that could be targeted, for error messages."""
    names: dict[str, None] = {}
    uncalled = {f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    for name, module in model.named_modules():
        if name and isinstance(module, kinds) and not _skip(name) and name not in uncalled:
            names[name.rsplit(".", 1)[-1]] = None
    return list(names)


def no_default_targets(
    model: nn.Module, method: str, allowed: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> ConfigError:
    return ConfigError(
        f"{method}: no target_modules given and no default is known for this backbone; "
        f"pass target_modules=[...], e.g. from these module names: {', '.join(candidate_names(model, allowed))}"
    )


def resolve_targets(
    model: nn.Module,
    patterns: list[str] | str | None,
    method: str,
    allowed: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> list[Target]:
    """Targets for ``method``; an error lists candidate names when nothing matches."""
    if patterns is None or (isinstance(patterns, list) and not patterns):
        raise no_default_targets(model, method, allowed)
    targets = match_modules(model, patterns)
    if not targets:
        raise ConfigError(
            f"{method}: target_modules={patterns!r} matches no module of {type(model).__name__}; "
            f"candidate names: {', '.join(candidate_names(model, allowed)) or '(none)'}"
        )
    for target in targets:
        _refuse_uncalled(model, target.name, method)
    wrong = [t for t in targets if not isinstance(t.module, allowed) and not _is_wrapped(t.module, allowed)]
    if wrong:
        kinds = ", ".join(k.__name__ for k in allowed)
        raise ConfigError(
            f"{method}: cannot adapt {wrong[0].name!r} of type {type(wrong[0].module).__name__}; "
            f"{method} applies to {kinds}. Narrow target_modules (candidates: {', '.join(candidate_names(model, allowed))})"
        )
    return targets


def _refuse_uncalled(model: nn.Module, name: str, method: str) -> None:
    """``nn.MultiheadAttention`` reads ``out_proj.weight`` directly and never calls the module,
    so a wrapper or hook there would silently do nothing."""
    parent_name, _, _ = name.rpartition(".")
    parent = base_of(model.get_submodule(parent_name)) if parent_name else None
    if isinstance(parent, nn.MultiheadAttention):
        raise ConfigError(
            f"{method}: {name!r} is read as a weight by nn.MultiheadAttention, never called, so it "
            f"cannot be adapted; target the attention module itself with slices, e.g. '{parent_name}[q,v]'"
        )


def _is_wrapped(module: nn.Module, allowed: tuple[type[nn.Module], ...]) -> bool:
    base = getattr(module, "base_layer", None)
    while base is not None:
        if isinstance(base, allowed):
            return True
        base = getattr(base, "base_layer", None)
    return False


def base_of(module: nn.Module) -> nn.Module:
    """The innermost original layer under any number of adapter wrappers."""
    inner = getattr(module, "base_layer", None)
    while isinstance(inner, nn.Module):
        module, inner = inner, getattr(inner, "base_layer", None)
    return module


def innermost_path(module: nn.Module, path: str) -> str:
    """``path`` (a tensor of :func:`base_of` ``(module)``) as seen from ``module``, through its wrappers."""
    prefix = ""
    inner = getattr(module, "base_layer", None)
    while isinstance(inner, nn.Module):
        inner, prefix = getattr(inner, "base_layer", None), prefix + "base_layer."
    return prefix + path


def slice_bounds(out_features: int, slices: tuple[str, ...] | None) -> dict[str, tuple[int, int]]:
    """The output rows ``(start, end)`` of each selected slice of a fused q/k/v projection."""
    if slices is None:
        return {}
    if out_features % len(FUSED_SLICE_NAMES):
        raise ConfigError(f"a fused q/k/v projection needs out_features divisible by 3, got {out_features}")
    size = out_features // len(FUSED_SLICE_NAMES)
    return {s: (i * size, (i + 1) * size) for i, s in enumerate(FUSED_SLICE_NAMES) if s in slices}
