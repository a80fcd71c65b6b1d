"""``layers``: which blocks a block-based method adapts (every method option set has it).

    layers: null            every block (the default; "all" means the same)
    layers: [0, 5, 11]      those blocks, by index in the structure's block order
    layers: first:4         the first 4 blocks; last:4 the last 4
    layers: auto:4          the 4 most important blocks, measured on training batches before
                            training (zoo.run / zoo train; see zoo.experiment.layer_selection),
                            which writes the chosen indices back here, so a saved adapter reloads
                            onto the same blocks

HF PEFT's ``layers_to_transform`` is the same idea for a fixed list; Pu et al. (2023) found that
training fewer, well-chosen layers keeps quality with far fewer parameters.
"""

from __future__ import annotations

import re
from typing import Any

from zoo.errors import ConfigError

_SPEC = re.compile(r"^(first|last|auto):([0-9]+)$")
FORMS = "a list of block indices, 'first:K', 'last:K' or 'auto:K'"


def check_layers(method: str, value: Any) -> Any:
    """The option as given, validated (lists of indices come back as a sorted list without repeats)."""
    if value is None or value == "all":  # "all": pyreft's spelling of every block
        return None
    if isinstance(value, str):
        match = _SPEC.match(value.strip())
        if not match or int(match.group(2)) < 1:
            raise ConfigError(f"{method}: layers={value!r} must be {FORMS}, with K >= 1")
        return value.strip()
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    ):
        return sorted(set(value))
    raise ConfigError(f"{method}: layers={value!r} must be {FORMS}")


def auto_count(value: Any) -> int | None:
    """K of ``auto:K``, else None."""
    match = _SPEC.match(value) if isinstance(value, str) else None
    return int(match.group(2)) if match and match.group(1) == "auto" else None


def select_blocks(method: str, value: Any, blocks: list[str]) -> list[str]:
    """The names of the blocks ``value`` selects out of ``blocks`` (the structure's, in order)."""
    if value is None:
        return list(blocks)
    count = len(blocks)
    if isinstance(value, str):
        match = _SPEC.match(value)
        if match is None:  # check_layers lets only these forms through
            raise ConfigError(f"{method}: layers={value!r} must be {FORMS}")
        kind, number = match.group(1), int(match.group(2))
        if kind == "auto":
            raise ConfigError(
                f"{method}: layers={value} is chosen from training batches, which zoo.run / zoo train measure before "
                f"training; with zoo.peft.apply pass the block indices (this backbone has {count} blocks)"
            )
        if number > count:
            raise ConfigError(
                f"{method}: layers={value} asks for {number} blocks; this backbone has {count} (0..{count - 1})"
            )
        return list(blocks[:number] if kind == "first" else blocks[count - number :])
    outside = [index for index in value if index >= count]
    if outside:
        raise ConfigError(
            f"{method}: layers={value} names block(s) {outside}; this backbone has {count} blocks (indices 0..{count - 1})"
        )
    return [blocks[index] for index in value]
