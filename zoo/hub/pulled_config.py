"""The ``config.yaml`` of a pulled adapter, read as untrusted data.

It is zoo's own run configuration (checked by :func:`zoo.experiment.config.validate`, strict), and a
hub may not use it to make zoo read anything: backbone options are only those the backbone allows
from a hub (``register_backbone(..., hub_options=...)``: sizes, pooling, lengths; never a file, URL,
checkpoint, cache folder or ``pretrained_cfg``), no option names a path or URL, and the paths it
carries (``backbone.pretrained``, ``data.root``) are never used. It must also agree with its index
entry (backbone, method, scale, domain, and the input transform every input goes through: a registered
transform by name, with parameters that transform accepts, never code). Nothing is built or loaded here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from zoo.errors import HubError

MAX_CONFIG_BYTES = 1 << 20


def _refuse_paths(value: Any, key: str, where: str) -> None:
    """Builder and loader options of a hub may not name a path: a loader would open it (``zoo eval`` reads
    the data a pulled configuration describes, from the user's own data root)."""
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_paths(item, f"{key}.{name}", where)
    elif isinstance(value, (list, tuple)):
        for number, item in enumerate(value):
            _refuse_paths(item, f"{key}[{number}]", where)
    elif isinstance(value, str) and (
        "/" in value or "\\" in value or value.startswith(("~", "..")) or re.match(r"^[A-Za-z]:", value)
    ):
        raise HubError(f"{where}: {key}={value!r} names a path or URL; a configuration from a hub may not. Refused")


def _has_aliases(path: Path) -> bool:
    """Whether the YAML file refers to an anchor (zoo never writes one; a hostile file nests them)."""
    import yaml

    try:
        return any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(path.read_text(), Loader=yaml.SafeLoader))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return False  # read_yaml names the problem


def read_pulled_config(folder: Path, entry: dict[str, Any], label: str):
    """The ``config.yaml`` of a pulled adapter as a :class:`zoo.experiment.config.RunConfig`, checked as
    untrusted: zoo's strict run-config model, then what a hub may not do there. Backbone options are
    only those the backbone allows from a hub (no file, URL, checkpoint or cache folder a builder would
    read); the backbone, method, scale and domain agree with the index entry; and no path it names is
    ever used (``backbone.pretrained`` means "the pretrained weights", found on this machine by
    :func:`zoo.hub.predict.choose_weights`; ``data.root`` is dropped). Nothing is built or loaded here."""
    from zoo.catalog.backbones import BACKBONES, check_hub_options
    from zoo.errors import ConfigError, UnknownNameError
    from zoo.experiment.config import validate
    from zoo.experiment.yaml_files import read_yaml

    path = Path(folder) / "config.yaml"
    where = f"{label}: {path.name}"
    if not path.is_file():
        raise HubError(
            f"{where} is missing from {folder}; an adapter from a hub carries the configuration it was trained with"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise HubError(f"{where} is {path.stat().st_size} bytes, more than a run configuration ever is; refused")
    if _has_aliases(path):
        raise HubError(
            f"{where} uses YAML aliases (*name); a configuration from a hub may not: a few aliases can stand for "
            f"billions of values. Refused"
        )
    try:
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"it holds a {type(data).__name__}, not a mapping of sections")
        config = validate(data, "")
    except (ConfigError, UnknownNameError, OSError, ValueError) as error:
        raise HubError(f"{where} is not a valid run configuration: {error}") from None
    backbone = entry["backbone"]
    if config.backbone.name != backbone["name"]:
        raise HubError(f"{where} names backbone {config.backbone.name}, the index entry {backbone['name']}; refused")
    check_hub_options(config.backbone.name, config.backbone.options, where)
    check_hub_options(backbone["name"], backbone.get("options") or {}, f"{label}: the index entry")
    if config.method.name != entry["method"]["name"]:
        raise HubError(f"{where} names method {config.method.name}, the index entry {entry['method']['name']}; refused")
    if backbone.get("scale") is not None and backbone["scale"] != config.scale:
        raise HubError(f"{where} has scale={config.scale}, the index entry scale={backbone['scale']}; refused")
    domain = BACKBONES.get(config.backbone.name).domain
    if domain != entry["domain"]:
        raise HubError(f"{label}: the index entry says domain {entry['domain']!r}, its backbone is a {domain} backbone")
    for section, options in (
        ("backbone", config.backbone.options),
        ("data", config.data.options),
        ("task", config.task.options),
    ):
        _refuse_paths(options, f"{section}.options", where)
    entry_input_transform(entry, config, label)
    if isinstance(config.backbone.pretrained, str):
        config.backbone.pretrained = True  # a path on the publisher's machine: the weights are found here instead
    config.data.root = None
    return config


def entry_input_transform(entry: dict[str, Any], config, label: str):
    """The input transform of a pulled adapter (an :class:`zoo.catalog.input_transforms.InputTransform`, or
    None): the one its index entry names, a registered transform whose own check accepts the parameters,
    and the same one its ``config.yaml``'s data options ask for (what :func:`zoo.experiment.build.resolve`
    applies). An entry from before input transforms were recorded names none: its configuration's stands."""
    from zoo.catalog.datasets import DATASETS
    from zoo.catalog.input_transforms import input_transform, split_transform_options
    from zoo.errors import ConfigError, UnknownNameError

    named = entry.get("input_transform")
    try:
        from_entry = input_transform(named["name"], named.get("parameters") or {}) if named else None
    except ConfigError as error:
        raise HubError(
            f"{label}: the index entry's input_transform is not one this zoo applies ({error}); refused"
        ) from None
    try:
        declared = DATASETS.get(config.data.name).input_transform
        from_config, _ = split_transform_options(declared, config.data.options)
    except (ConfigError, UnknownNameError) as error:
        raise HubError(f"{label}: config.yaml: {error}; refused") from None
    if named and from_entry != from_config:
        said = from_config.label() if from_config else "none"
        raise HubError(
            f"{label}: the index entry's input_transform is {from_entry.label() if from_entry else 'none'}, the one "
            f"config.yaml's data options ask for is {said}; they must agree. Refused"
        )
    return from_config
