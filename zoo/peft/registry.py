"""The method registry: one decorator per PEFT method file.

A method is an injection function ``inject(context, config)`` that adds the method's
modules for one named adapter, registered with its config class::

    @register_method("lora", LoraConfig, mergeable=True, starts_at_identity=True,
                     default_targets=("query", "value"), peft_type="LORA")
    def inject_lora(context, config): ...

Method files are found, not listed: every module of this package is imported on first use
of the registry, so a new method is one new file.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from zoo.peft.config import ConfigError, MethodConfig

if TYPE_CHECKING:
    from zoo.peft.engine import InjectionContext


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_class: type[MethodConfig]
    inject: Callable[["InjectionContext", MethodConfig], None]
    mergeable: bool = False
    """Reparameterisation methods whose update can be folded into the base weights."""
    merge_refusal: str | None = None
    """Why a method that is not mergeable cannot be, where more is to be said than that it adds computation."""
    trains_base: bool = False
    """Full fine-tuning: base weights are trained in place (no separate adapter tensors)."""
    needs_structure: bool = False
    """Needs a description of blocks, attention and FFN (see :mod:`zoo.peft.structure`)."""
    starts_at_identity: bool = False
    """The adapted model computes exactly what the base does until training moves the adapter."""
    default_targets: tuple[str, ...] = ()
    """Structure roles (:data:`zoo.peft.structure.ROLES`) targeted when ``target_modules`` is not
    given, e.g. ``("query", "value")``; each structure says where those are in its blocks."""
    peft_type: str | None = None
    """The ``peft_type`` HF PEFT uses for this method, when HF PEFT has it."""
    to_peft: Callable[[MethodConfig, Any, str], dict[str, Any] | None] | None = None
    """``(config, model, adapter_name) -> peft config fields``, or None when this adapter uses
    something peft cannot express (e.g. fused-slice targets)."""
    from_peft: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    peft_key_prefix: str = "base_model.model."
    """Prefix HF PEFT puts before module paths in ``adapter_model.safetensors``."""
    export_keys: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Renames saved tensors where HF PEFT's names are not module paths (prefix tuning)."""
    import_keys: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """The inverse of ``export_keys``, applied when loading."""


_METHODS: dict[str, MethodSpec] = {}

# Modules of zoo.peft that are machinery, not methods: skipped when looking for method files.
_NOT_METHODS = frozenset(
    {
        "config",
        "engine",
        "exclusions",
        "io",
        "layers",
        "mixed",
        "prefix_attention",
        "registry",
        "report",
        "structure",
        "targeting",
    }
)
_loaded = False


def register_method(
    name: str, config_class: type[MethodConfig], **spec_options: Any
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"method name {name!r} must be a lowercase identifier")

    def decorator(inject: Callable[..., None]) -> Callable[..., None]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        # A config class registered under two names keeps the first: error messages name it.
        if not config_class.__dict__.get("method"):
            config_class.method = name
        _METHODS[name] = MethodSpec(name=name, config_class=config_class, inject=inject, **spec_options)
        return inject

    return decorator


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    # This file's own folder is the package: listing it needs no import of zoo.peft (which imports us).
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not module.name.startswith("_") and module.name not in _NOT_METHODS:
            importlib.import_module(f"zoo.peft.{module.name}")


def list_methods() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    _load_all()
    if not isinstance(name, str) or name not in _METHODS:
        close = difflib.get_close_matches(str(name), sorted(_METHODS), n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown PEFT method {name!r}.{hint} Known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_config(section: Any, key_prefix: str = "method") -> MethodConfig:
    """A run configuration's ``method`` section, ``{name: lora, r: 8, ...}``, as the config object of the
    method it names (``name`` picks the class): the typed form :func:`zoo.peft.apply` takes as it is.
    A config object passes unchanged; errors name keys as ``method.<option>``."""
    if isinstance(section, MethodConfig):
        return section
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError(
            f"{key_prefix}.name is required: a PEFT method from `zoo ls methods`, e.g. {key_prefix}.name=lora"
        )
    options = {key: value for key, value in section.items() if key != "name"}
    return get_method(section["name"]).config_class.from_options(options, key_prefix=key_prefix)
