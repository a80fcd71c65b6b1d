"""Reading and writing the YAML of recipes and run directories, and merging one mapping into another
(OmegaConf's merge: nested mappings merge, anything else, lists included, is replaced).

Recipes (:mod:`zoo.experiment.recipes`) and the typed config (:mod:`zoo.experiment.config`) both
read YAML; keeping it here lets the config load recipes without the recipes importing the config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from zoo.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` as a string (it wants ``3.0e-4``); read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """A command-line value read as YAML: ``16`` -> 16, ``3e-4`` -> 0.0003, ``[q,v]`` -> a list,
    ``null`` -> None, anything else that is not YAML -> the string itself."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (backbone, data, ...), found a {type(data).__name__}"
        )
    return data


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def merge(*mappings: dict[str, Any]) -> dict[str, Any]:
    """The mappings merged left to right into a new one; ``${...}`` interpolations are kept, unresolved."""
    try:
        merged = OmegaConf.merge(*(OmegaConf.create(m) for m in mappings))
        return cast(dict[str, Any], OmegaConf.to_container(merged))  # merged DictConfigs become a dict
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise ConfigError(f"cannot merge{f' key {key}' if key else ''}: {str(error).splitlines()[0]}") from None
