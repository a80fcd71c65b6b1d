"""The one way configuration is typed: strict pydantic models whose errors read as one line.

Every section of a run configuration (:mod:`zoo.experiment.config`), the trainer's settings
(:class:`zoo.train.TrainSettings`) and every PEFT method's options (:class:`zoo.peft.MethodConfig`)
subclass :class:`StrictModel`: unknown keys are refused, nothing is coerced (``1`` is not a
bool, ``"8"`` is not an int; an int is a valid float), nan and inf are refused, and a bad
value raises :class:`zoo.errors.ConfigError` naming the key, the value and what is allowed,
with the closest valid keys for an unknown one.

Checks beyond types (ranges, choices) go in :meth:`StrictModel.check`, which raises
ConfigError with its own message; that message is passed on unchanged.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, model_validator

from zoo.errors import ConfigError

_WORDS = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false"}


def _number_as_written(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("Input should be a valid number")
    if not math.isfinite(value):
        raise ValueError("it must be a finite number (nan and inf are refused)")
    return value


Number = Annotated[float, PlainValidator(_number_as_written)]
"""A finite number kept as written: ``8`` stays an int (a saved config and a model card say
``lora_alpha=8``, not ``8.0``); a bool or a string is refused like in any strict field."""


def type_name(annotation: Any) -> str:
    """``int`` -> "a whole number", ``int | None`` -> "a whole number or null", others as written."""
    if typing.get_origin(annotation) is Annotated:
        return type_name(annotation.__origin__)
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in arguments:
        rest = [argument for argument in arguments if argument is not type(None)]
        inner = type_name(rest[0]) if len(rest) == 1 else " or ".join(type_name(argument) for argument in rest)
        return f"{inner} or null"
    if arguments:
        return str(annotation).replace("typing.", "")
    name = getattr(annotation, "__name__", None) or str(annotation)
    return _WORDS.get(name, name)


def unknown_key(key: str, valid: list[str], where: str = "", prefix: str = "", name: str | None = None) -> ConfigError:
    """An unknown key, the closest valid ones and the whole valid set."""
    name = name or key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""
    listed = ", ".join(prefix + v for v in valid)
    return ConfigError(f"unknown key {key!r}{where}.{hint} Valid keys: {listed}")


def describe(
    error: ValidationError, model: type[BaseModel], prefix: str = "", qualifier: str = "", lead: str = ""
) -> str:
    """One line for a pydantic error: ``train.lr='fast' is not allowed: ...; expected a number``.
    ``prefix`` is put before the keys (``train``), ``qualifier`` after "is not allowed" (`` for lora``),
    ``lead`` before the whole message (``lora: ``); a ConfigError raised by a check passes unchanged."""
    messages = []
    for item in error.errors():
        raised = (item.get("ctx") or {}).get("error")
        if isinstance(raised, ConfigError):  # a check() of the model, or a nested model's own message
            messages.append(str(raised))
            continue
        path: list[str] = []
        owner: type[BaseModel] | None = model
        field = None
        for part in item["loc"]:
            if isinstance(part, int):
                continue  # an index into a list
            if owner is not None and part in owner.model_fields:
                field = owner.model_fields[part]
                path.append(str(part))
                nested = field.annotation
                owner = nested if isinstance(nested, type) and issubclass(nested, BaseModel) else None
            elif item["type"] == "extra_forbidden" and owner is not None:
                path.append(str(part))
            else:
                break  # a union reports one error per member ("bool", "str"): keep the field
        key = ".".join([prefix, *path] if prefix else path)
        if item["type"] == "extra_forbidden" and owner is not None:
            valid = list(owner.model_fields)
            parent = key.rpartition(".")[0]
            messages.append(lead + str(unknown_key(key, valid, prefix=f"{parent}." if parent else "")))
        elif item["type"] == "missing" and field is not None:
            messages.append(f"{lead}{key} is required ({field.description or type_name(field.annotation)})")
        elif item["type"] == "finite_number":
            messages.append(
                f"{lead}{key}={item['input']!r} is not allowed{qualifier}: it must be a finite number "
                f"(nan and inf are refused)"
            )
        else:
            expected = f"; expected {type_name(field.annotation)}" if field is not None else ""
            reason = item["msg"].removeprefix("Value error, ")
            messages.append(f"{lead}{key}={item['input']!r} is not allowed{qualifier}: {reason}{expected}")
    return "; ".join(list(dict.fromkeys(messages))[:3])


class StrictModel(BaseModel):
    """A strict, closed pydantic model; constructing one with bad values raises ConfigError."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)
    error_prefix: ClassVar[str] = ""
    """Put before field names in error messages (``train`` for the trainer's settings)."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            # the pydantic error stays the cause, for callers that word it their own way (see describe)
            raise ConfigError(type(self).explain(error)) from error

    @classmethod
    def explain(cls, error: ValidationError) -> str:
        """The one-line message of a validation error of this model."""
        return describe(error, cls, cls.error_prefix)

    @model_validator(mode="after")
    def _run_checks(self) -> StrictModel:
        # check() may normalise values (assignments); the keys a caller set stay those it set
        given = set(self.model_fields_set)
        self.check()
        object.__setattr__(self, "__pydantic_fields_set__", given)
        return self

    def check(self) -> None:
        """Checks beyond types; subclasses extend it (calling ``super().check()``) and raise ConfigError."""
