"""Typed configuration shared by every PEFT method.

Each method declares a strict pydantic model that subclasses :class:`MethodConfig`, in the
method's own file (``zoo/peft/lora.py`` holds ``LoraConfig``, its layers and its inject
function: a PEFT method is one file). Fields carry their help text as ``description``; option
names follow HF PEFT where the method exists there. Types are checked by pydantic, strictly
(``"8"`` is not an int, ``1`` is not a bool, nan and inf are refused); :meth:`MethodConfig.check`
adds the method's own checks (ranges, choices); every error is a ConfigError naming the option,
the bad value and what is allowed.

A config is typed once: a recipe's ``method:`` section becomes the config object of the
method it names (:func:`zoo.peft.registry.method_config`), and :func:`zoo.peft.apply` takes
that object as it is (``apply(model, config.name, config=config)``) without checking it again.

Why the configs stay in the method files rather than in a torch-free module of their own:
the method files import torch, and the config layer (:mod:`zoo.experiment.config`) must
import without it; it does, because it reaches the method configs only through the registry,
by name, when a ``method:`` section is validated (the registry imports the method files on its
first lookup). Keeping each config beside the code that reads it means a new method is still
one new file, with nothing to list anywhere else.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, ValidationError, model_validator

from zoo.errors import ConfigError
from zoo.peft.block_selection import check_layers
from zoo.strict_model import StrictModel, describe


def option(default: Any = None, help: str = "", **kwargs: Any) -> Any:
    """A config field with its help text (pydantic copies mutable defaults for each instance)."""
    return Field(default, description=help, **kwargs)


class MethodConfig(StrictModel):
    """Options every method has.

    ``target_modules`` follows HF PEFT: a list of names matches a module whose full name
    equals an entry or ends with ``"." + entry``; a single string is a regular expression
    matched against the full module name. An entry may end in a slice selector such as
    ``"qkv[q,v]"`` to adapt only some slices of a fused projection. ``None`` uses the
    default targets that the backbone's structure description gives for the method.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    method: ClassVar[str] = ""
    """The name the class is registered under (set by :func:`zoo.peft.register_method`)."""

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

    @model_validator(mode="before")
    @classmethod
    def _tuples_as_lists(cls, data: Any) -> Any:
        # Python callers write target_modules=("query", "value"); YAML has only lists
        if isinstance(data, dict):
            return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}
        return data

    def check(self) -> None:
        """Check option values; subclasses extend this and call ``super().check()``."""
        self.layers = check_layers(self.method, self.layers)

    @property
    def name(self) -> str:
        """The method: the discriminator of a run configuration's ``method`` section."""
        return self.method

    @property
    def options(self) -> dict[str, Any]:
        """The options that were given (the rest are defaults), as a recipe states them."""
        return {key: getattr(self, key) for key in type(self).model_fields if key in self.model_fields_set}

    @classmethod
    def from_options(cls, options: dict[str, Any], key_prefix: str | None = None) -> "MethodConfig":
        """Build a config from keyword options; unknown ones are named with the closest valid ones.
        ``key_prefix`` (``"method"``) words errors as keys of a run configuration: ``method.r=...``."""
        names = sorted(cls.model_fields)
        unknown = sorted(set(options) - set(names))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{cls.method}: unknown option(s) {', '.join(hints)}; valid options: {', '.join(names)}")
        try:
            return cls(**options)
        except ConfigError as error:
            if key_prefix is None or not isinstance(error.__cause__, ValidationError):
                raise
            raise ConfigError(describe(error.__cause__, cls, key_prefix, qualifier=f" for {cls.method}")) from None

    @classmethod
    def explain(cls, error: ValidationError) -> str:
        return describe(error, cls, lead=f"{cls.method}: ")

    def to_dict(self) -> dict[str, Any]:
        """Every option, defaults included (what a saved adapter records)."""
        return self.model_dump()

    @classmethod
    def help(cls) -> dict[str, str]:
        return {name: field.description or "" for name, field in cls.model_fields.items()}


# Range checks for check(); the types are pydantic's, already checked by then.
def require_positive(config: MethodConfig, name: str, allow_zero: bool = False) -> None:
    value = getattr(config, name)
    if not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{config.method}: {name}={value!r} is not allowed; {name} must be a number {bound}")


def require_int_positive(config: MethodConfig, name: str) -> None:
    value = getattr(config, name)
    if value <= 0:
        raise ConfigError(f"{config.method}: {name}={value!r} is not allowed; {name} must be an integer > 0")


def require_probability(config: MethodConfig, name: str) -> None:
    value = getattr(config, name)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{config.method}: {name}={value!r} is not allowed; {name} must be in [0, 1)")


def require_choice(config: MethodConfig, name: str, choices: tuple[Any, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(
            f"{config.method}: {name}={value!r} is not allowed; choose one of {', '.join(map(repr, choices))}"
        )
