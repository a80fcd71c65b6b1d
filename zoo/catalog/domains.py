"""Finding the installed domain packages.

Domains announce themselves through the ``zoo.domains`` entry-point group (see
``pyproject.toml``); loading one imports it, which runs its registration decorators.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

_names: list[str] | None = None
_loading = False


def load_domains() -> list[str]:
    """Import every registered domain package once; returns their names."""
    global _names, _loading
    if _names is not None or _loading:
        return _names or []
    _loading = True
    try:
        found = list(entry_points(group="zoo.domains"))
        for entry in found:
            importlib.import_module(entry.value)
        _names = [entry.name for entry in found]
    finally:
        _loading = False
    return _names
