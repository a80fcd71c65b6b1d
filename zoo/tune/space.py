"""Search spaces for ``zoo tune``: one small grammar, on the command line or in a recipe's ``search:``.

::

    method.r=int:2..64:log                          a whole number in [2, 64], sampled on a log scale
    train.lr=float:1e-5..1e-2:log                   a real number in [1e-5, 1e-2], log scale
    method.lora_dropout=float:0..0.3                a real number, linear scale
    method.target_modules=choice:[query,value]|[query,key,value]
                                                    one of the alternatives (each read as YAML)

In a recipe the same specs are the values of a mapping::

    search:
      method.r: int:2..64:log
      train.lr: float:1e-5..1e-2:log
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from zoo.errors import ConfigError
from zoo.experiment.yaml_files import parse_value

GRAMMAR = """search specs are KEY=KIND:SPEC, one of
  KEY=int:LOW..HIGH[:log]        e.g. method.r=int:2..64:log
  KEY=float:LOW..HIGH[:log]      e.g. train.lr=float:1e-5..1e-2:log
  KEY=choice:A|B|...             e.g. method.target_modules=choice:[query,value]|[query,key,value]
(KEY is any key of `zoo validate RECIPE`; in a recipe's search: section, KEY: KIND:SPEC)"""


@dataclass(frozen=True)
class SearchParameter:
    key: str
    kind: str
    """``int``, ``float`` or ``choice``."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """The value an Optuna trial proposes for this key."""
        if self.kind == "int":
            low, high = self.bounds()
            return trial.suggest_int(self.key, int(low), int(high), log=self.log)
        if self.kind == "float":
            low, high = self.bounds()
            return trial.suggest_float(self.key, low, high, log=self.log)
        # Optuna stores choices as plain values; lists are kept as their YAML text and read back
        chosen = trial.suggest_categorical(self.key, [_as_text(choice) for choice in self.choices])
        return parse_value(chosen)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {' | '.join(_as_text(c) for c in self.choices)}"
        low, high = self.bounds()
        return f"{self.key} in [{low:g}, {high:g}] ({self.kind}{', log' if self.log else ''})"

    def bounds(self) -> tuple[float, float]:
        """(low, high) of an int or float range."""
        if self.low is None or self.high is None:
            raise ConfigError(f"search parameter {self.key}: an {self.kind} range needs both low and high")
        return self.low, self.high


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(str(item) for item in value) + "]"
    return str(value)


def _bad(spec: str, why: str) -> ConfigError:
    return ConfigError(f"search spec {spec!r}: {why}\n{GRAMMAR}")


def parse_parameter(key: str, text: str) -> SearchParameter:
    spec = f"{key}={text}"
    if not key or "." not in key:
        raise _bad(spec, "the key must be a dotted config key such as method.r or train.lr")
    kind, separator, body = str(text).partition(":")
    if not separator or not body:
        raise _bad(spec, "the kind (int, float or choice) and its range or alternatives are missing")
    if kind == "choice":
        choices = tuple(parse_value(item) for item in body.split("|"))
        if len(choices) < 2 or any(item == "" for item in body.split("|")):
            raise _bad(spec, "a choice needs two or more non-empty alternatives separated by |")
        return SearchParameter(key, "choice", choices=choices)
    if kind not in ("int", "float"):
        raise _bad(spec, f"unknown kind {kind!r}")
    bounds, _, scale = body.partition(":")
    if scale not in ("", "log"):
        raise _bad(spec, f"the scale after the range must be log or nothing, not {scale!r}")
    low_text, dots, high_text = bounds.partition("..")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise _bad(spec, f"the range {bounds!r} must be LOW..HIGH with two numbers") from None
    if not dots or not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise _bad(spec, f"the range {bounds!r} must be LOW..HIGH with LOW < HIGH")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise _bad(spec, "an int range needs whole numbers")
    if scale == "log" and low <= 0:
        raise _bad(spec, "a log scale needs LOW > 0")
    return SearchParameter(key, kind, low, high, scale == "log")


def parse_search(specs: list[str] | dict[str, Any]) -> list[SearchParameter]:
    """``["method.r=int:2..64:log", ...]`` (command line) or ``{"method.r": "int:2..64:log"}`` (recipe)."""
    items = specs.items() if isinstance(specs, dict) else [_split(spec) for spec in specs]
    parameters, seen = [], set()
    for key, text in items:
        if key in seen:
            raise ConfigError(f"search: {key} is given twice")
        seen.add(key)
        parameters.append(parse_parameter(key, text))
    return parameters


def _split(spec: str) -> tuple[str, str]:
    key, separator, text = spec.partition("=")
    if not separator:
        raise _bad(spec, "it has no '='")
    return key.strip(), text.strip()
