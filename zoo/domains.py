"""Finding the installed domain packages.

Domains announce themselves through the ``zoo.domains`` entry-point group (see
``pyproject.toml``); loading one imports it, which runs its registration decorators.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

_loaded = False
_loading = False


def load_domains() -> list[str]:
    """Import every registered domain package once; returns their names."""
    global _loaded, _loading
    names = [ep.name for ep in entry_points(group="zoo.domains")]
    if _loaded or _loading:
        return names
    _loading = True
    try:
        for entry in entry_points(group="zoo.domains"):
            importlib.import_module(entry.value)
        _loaded = True
    finally:
        _loading = False
    return names
