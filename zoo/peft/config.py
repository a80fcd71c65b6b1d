"""Typed configuration shared by every PEFT method.

Each method declares a dataclass that subclasses :class:`MethodConfig`. Fields carry
their help text in ``metadata["help"]``; option names follow HF PEFT where the method
exists there. Validation happens at construction, and every error names the option,
the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from zoo.errors import ConfigError
from zoo.peft.block_selection import check_layers


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text (mutable defaults go through ``default_factory``)."""
    metadata = {"help": help}
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class MethodConfig:
    """Options every method has.

    ``target_modules`` follows HF PEFT: a list of names matches a module whose full name
    equals an entry or ends with ``"." + entry``; a single string is a regular expression
    matched against the full module name. An entry may end in a slice selector such as
    ``"qkv[q,v]"`` to adapt only some slices of a fused projection. ``None`` uses the
    default targets that the backbone's structure description gives for the method.
    """

    method: ClassVar[str] = ""

    target_modules: list[str] | str | None = option(None, help="Modules to adapt (names, suffixes or a regex).")
    modules_to_save: list[str] | None = option(
        None,
        help="Modules trained fully and saved with the adapter, e.g. the task head. "
        "None picks the backbone's head when one is found; [] trains no head.",
    )
    layers: list[int] | str | None = option(
        None,
        help="Blocks to adapt: indices, 'first:K', 'last:K' or 'auto:K' (the K most important, measured "
        "before training); None: every block. Block-based methods only (zoo.peft.block_selection).",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check option values; subclasses extend this and call ``super().validate()``."""
        self.layers = check_layers(self.method, self.layers)
        if self.target_modules is not None and not isinstance(self.target_modules, (str, list, tuple)):
            raise ConfigError(
                f"{self.method}: target_modules={self.target_modules!r} must be a list of module names or a regex string"
            )
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str) or not all(isinstance(m, str) for m in self.modules_to_save):
                raise ConfigError(
                    f"{self.method}: modules_to_save={self.modules_to_save!r} must be a list of module names"
                )
            self.modules_to_save = list(self.modules_to_save)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "MethodConfig":
        """Build a config from keyword options, naming unknown ones and the valid set."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(names), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"{cls.method}: unknown option(s) {', '.join(hints)}; valid options: {', '.join(sorted(names))}"
            )
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def require_positive(config: MethodConfig, name: str, allow_zero: bool = False) -> None:
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{config.method}: {name}={value!r} is not allowed; {name} must be a number {bound}")


def require_int_positive(config: MethodConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{config.method}: {name}={value!r} is not allowed; {name} must be an integer > 0")


def require_probability(config: MethodConfig, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{config.method}: {name}={value!r} is not allowed; {name} must be in [0, 1)")


def require_choice(config: MethodConfig, name: str, choices: tuple[Any, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(
            f"{config.method}: {name}={value!r} is not allowed; choose one of {', '.join(map(repr, choices))}"
        )
