"""Where zoo keeps what it caches: one root for all of it.

``$ZOO_CACHE_DIR`` when set, else the platform's cache folder for zoo (``platformdirs``:
``~/.cache/zoo`` on Linux, honouring ``XDG_CACHE_HOME``; ``~/Library/Caches/zoo`` on macOS). Under it:
``hub/`` (indexes and pulled adapters, :mod:`zoo.hub.pull`), ``data/`` (downloaded datasets, unless
``ZOO_DATA_DIR`` or ``data.root`` names another folder) and ``fixtures/`` (synthetic datasets for
``scale=tiny``). Setting ``ZOO_CACHE_DIR`` moves every one of them.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ZOO_CACHE_DIR"


def cache_root() -> Path:
    """``$ZOO_CACHE_DIR``, else ``platformdirs.user_cache_dir("zoo")``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("zoo", appauthor=False))


def cache_dir(name: str) -> Path:
    """One part of the cache (``hub``, ``data``, ``fixtures``): ``cache_root() / name``."""
    return cache_root() / name
