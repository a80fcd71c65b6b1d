"""Recipes: ``zoo/recipes/<domain>/<task>-<method>.yaml``, found by scanning the folder.

A recipe is named by its path under the recipes folder without ``.yaml``
(``vision/medical-lora``); a path to any YAML file works too (e.g. one made with ``zoo cp``).
Files whose name starts with ``_`` are bases, not recipes: a recipe lists them under
``defaults:`` and states only what differs. Bases are merged in order, then the recipe on
top (OmegaConf's merge: nested mappings merge, other values, lists included, are replaced); a
base may have defaults itself. ``${section.key}`` interpolations are kept as written here and
resolved once the run's whole configuration is composed (:func:`zoo.experiment.config.compose`).
A ``defaults`` entry is a path relative to the file that names it (``_base`` is
``_base.yaml`` beside it) or, failing that, a name under the recipes folder
(``vision/_base``), so that a copied recipe still finds its base.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.experiment.yaml_files import merge, read_yaml

RECIPE_SUFFIX = ".yaml"
NOT_RECIPES = ("tables",)
"""Folders under recipes/ that hold other YAML (results tables), not training recipes."""


def recipes_root() -> Path:
    """``$ZOO_RECIPES_DIR``, else the recipes that ship inside the package (``zoo/recipes``, package data
    in the wheel: an installed zoo has them too)."""
    if os.environ.get("ZOO_RECIPES_DIR"):
        return Path(os.environ["ZOO_RECIPES_DIR"]).expanduser()
    return Path(__file__).resolve().parents[1] / "recipes"


def list_recipes(pattern: str = "*") -> list[str]:
    """Every recipe name under the recipes folder (bases and non-recipe folders left out)."""
    import fnmatch

    root = recipes_root()
    if not root.is_dir():
        return []
    names = []
    for path in root.rglob(f"*{RECIPE_SUFFIX}"):
        relative = path.relative_to(root)
        if path.name.startswith("_") or relative.parts[0] in NOT_RECIPES or len(relative.parts) < 2:
            continue
        names.append(relative.with_suffix("").as_posix())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def find_recipe(recipe: str | os.PathLike) -> Path:
    """The file of a recipe name or path; an unknown name suggests close matches."""
    text = str(recipe)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        if not path.is_absolute() and (recipes_root() / path).is_file():
            return recipes_root() / path
        raise ConfigError(f"recipe file {path} does not exist")
    candidate = recipes_root() / f"{text}{RECIPE_SUFFIX}"
    if candidate.is_file() and not candidate.name.startswith("_"):
        return candidate
    known = list_recipes()
    # a bare method or task name ("kadaptation", "sst2") lists the recipes containing it; else close spellings
    close = [name for name in known if text and text in name][:6] or difflib.get_close_matches(
        text, known, n=3, cutoff=0.5
    )
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ConfigError(
        f"unknown recipe {text!r}.{hint} `zoo ls recipes` lists the {len(known)} recipes under {recipes_root()}; "
        f"a path to a YAML file works too"
    )


def _resolve_base(name: str, relative_to: Path) -> Path:
    file_name = name if name.endswith((".yaml", ".yml")) else f"{name}{RECIPE_SUFFIX}"
    for candidate in (relative_to.parent / file_name, recipes_root() / file_name):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{relative_to}: defaults entry {name!r} not found (looked for {relative_to.parent / file_name} "
        f"and {recipes_root() / file_name})"
    )


def read_recipe(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe file with its ``defaults`` merged under it (``defaults`` itself removed)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"recipe defaults form a cycle: {chain}")
    data = read_yaml(path)
    defaults = data.pop("defaults", None) or []
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{path}: defaults={defaults!r} must be a list of base recipe files, e.g. [_base]")
    bases = [read_recipe(_resolve_base(name, path), (*_seen, path)) for name in defaults]
    return merge(*bases, data)


def recipe_summary(name: str) -> dict[str, Any]:
    """Backbone, dataset, method and description of a recipe, read without validating it."""
    data = read_recipe(find_recipe(name))
    return {
        "name": name,
        "backbone": (data.get("backbone") or {}).get("name"),
        "dataset": (data.get("data") or {}).get("name"),
        "method": (data.get("method") or {}).get("name"),
        "description": data.get("description", ""),
    }
