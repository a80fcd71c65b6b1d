"""Methods that do not fit a backbone's structure, declared once, with the reason.

Domain packages declare each next to the structure it concerns. The domain test matrix, the
recipe-coverage test and the table in zoo/recipes/README.md all read this table: a method that
does not fit must be a row here (and still raise a ConfigError matching ``error``), and every
other pair must apply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exclusion:
    method: str
    structure: str
    """Name of a registered :class:`~zoo.peft.structure.Structure`."""
    reason: str
    """Why the method does not fit, in a sentence for the recipes README."""
    error: str
    """A regex the ConfigError that applying the method raises must match: the reason as the code says it."""


_EXCLUSIONS: dict[tuple[str, str], Exclusion] = {}


def register_exclusion(method: str, structure: str, reason: str, error: str) -> Exclusion:
    key = (method, structure)
    if key in _EXCLUSIONS:
        raise ValueError(f"{method} on {structure} is already excluded")
    _EXCLUSIONS[key] = Exclusion(method, structure, reason, error)
    return _EXCLUSIONS[key]


def list_exclusions() -> list[Exclusion]:
    return sorted(_EXCLUSIONS.values(), key=lambda row: (row.structure, row.method))


def exclusion_for(method: str, structure: str | None) -> Exclusion | None:
    return _EXCLUSIONS.get((method, structure)) if structure is not None else None
