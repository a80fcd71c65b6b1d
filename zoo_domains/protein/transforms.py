"""Input transforms of protein datasets: a window of residues.

FLIP's GB1 sequences are 265 residues: GB1 (residues 1-56, where the four mutated sites lie) fused to a
partner that no variant changes. ``flip_gb1``'s option ``residues=1-56`` trains on that window only; the
window is then part of the model, so every sequence given to it later (``zoo predict``, ``zoo eval``, a
pulled adapter) is cut the same way, and one shorter than the window's end is refused rather than
silently fed whole or in part.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zoo.catalog.input_transforms import InputTransformSpec, register_input_transform
from zoo.errors import DataError

WINDOW_PARAMETERS = ("residues",)


def window_bounds(residues: Any) -> tuple[int, int]:
    """``"FIRST-LAST"`` (1-based, inclusive) as ``(FIRST, LAST)``; a ValueError saying what is expected."""
    first, _, last = str(residues).strip().partition("-")
    if not (first.isdigit() and last.isdigit()) or not 1 <= int(first) <= int(last):
        raise ValueError(f"residues={residues!r}; expected FIRST-LAST, 1-based, FIRST <= LAST, e.g. residues=1-56")
    return int(first), int(last)


def check_window(parameters: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(parameters) - set(WINDOW_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}; residue_window takes residues=FIRST-LAST")
    if "residues" not in parameters:
        raise ValueError("residue_window needs residues=FIRST-LAST (1-based, inclusive), e.g. residues=1-56")
    if not isinstance(parameters["residues"], str):
        raise ValueError(f"residues={parameters['residues']!r} must be a string FIRST-LAST, e.g. '1-56'")
    first, last = window_bounds(parameters["residues"])
    return {"residues": f"{first}-{last}"}


def cut_window(sequence: Any, parameters: Mapping[str, Any], where: str) -> str:
    """Residues FIRST..LAST of ``sequence``; a DataError naming ``where`` when it is shorter than LAST."""
    first, last = window_bounds(parameters["residues"])
    if not isinstance(sequence, str):
        raise DataError(
            f"{where}: a protein sequence must be a string of one-letter codes, not {type(sequence).__name__}"
        )
    if len(sequence) < last:
        raise DataError(
            f"{where}: {len(sequence)} residues, but inputs are cut to residues {first}-{last} (input transform "
            f"residue_window, residues={first}-{last}, as the model was trained); give the whole sequence, at least "
            f"{last} residues"
        )
    return sequence[first - 1 : last]


def describe_window(parameters: Mapping[str, Any]) -> str:
    return f"inputs are cut to residues {parameters['residues']} before the model sees them"


register_input_transform(
    InputTransformSpec(
        name="residue_window",
        domain="protein",
        check=check_window,
        apply=cut_window,
        describe=describe_window,
    )
)
