"""A hub's ``index.json``: which adapters it has, and everything needed to trust one.

A hub is a static tree (a folder, any web server, or a Hugging Face Hub repository)::

    index.json                       {"schema_version": 1, "adapters": {NAME: {"latest": V, "versions": {V: ENTRY}}}}
    text/sst2-lora/1/adapter/adapter_config.json
    text/sst2-lora/1/adapter/adapter_model.safetensors
    text/sst2-lora/1/README.md, config.yaml, eval_results.json

An entry names its base backbone (zoo name, weights source and revision, and a fingerprint of
the weights it was trained on), the method and its configuration, the dataset (files, checksums,
split sizes), the metrics with the split they were measured on, the recipe and command, the
licence, a few reference predictions, and every file with its size and sha256. Nothing else on
the server is ever fetched. Every entry is read through the typed schema of :mod:`zoo.hub.schema`:
an entry whose paths are absolute or climb out of its folder, whose weights are not safetensors,
which lacks the adapter's two files or a required field, or whose version disagrees with the key it
is listed under, is refused with a message naming the hub, the entry and the field.
"""

from __future__ import annotations

import json
from typing import Any

from zoo.errors import HubError
from zoo.hub.schema import (  # noqa: F401 - the names a hub's users import from here
    ADAPTER_FILES,
    ALLOWED_SUFFIXES,
    MAX_FILE_BYTES,
    NAME_PATTERN,
    SCHEMA_VERSION,
    SHA256_PATTERN,
    VERSION_PATTERN,
    HubEntry,
    check_name,
    check_version,
    parse_entry,
    parse_index_document,
    safe_relative_path,
)

INDEX_FILE = "index.json"


def empty_index() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "adapters": {}}


def validate_entry(entry: Any, name: str | None = None, source: str = "the hub") -> dict[str, Any]:
    """Check an index entry before anything of it is fetched; returns it as zoo reads it (the declared
    fields of :class:`zoo.hub.schema.HubEntry`, typed; unknown keys dropped)."""
    label = f"{entry.get('name', name)}@{entry.get('version')}" if isinstance(entry, dict) else name
    checked = parse_entry(entry, f"{source}: index entry {label}")
    if name is not None and checked.name != name:
        raise HubError(f"{source}: index entry {label}: listed under {name!r} but names itself {checked.name!r}")
    return checked.model_dump(mode="json")


def parse_index(text: str | bytes, source: str) -> dict[str, Any]:
    """The index, checked as a whole (every entry typed, every version key agreeing with its entry);
    returned as read, so that a push keeps what a newer zoo wrote."""
    try:
        index = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HubError(f"{source} is not valid JSON ({error})") from None
    parse_index_document(index, source)
    return index


def split_reference(reference: str) -> tuple[str, str | None]:
    """``text/agnews-lora@2`` -> (``text/agnews-lora``, ``2``); no ``@``: the latest version."""
    name, _, version = reference.partition("@")
    return check_name(name), (check_version(version) if version else None)


def find_entry(index: dict[str, Any], reference: str, source: str) -> dict[str, Any]:
    """The checked entry of ``name[@version]`` (the latest version without one)."""
    name, version = split_reference(reference)
    record = index["adapters"].get(name)
    if record is None:
        import difflib

        close = difflib.get_close_matches(name, list(index["adapters"]), n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; it has {', '.join(sorted(index['adapters'])) or 'none'}"
        )
        raise HubError(f"{source} has no adapter {name!r}{hint} (zoo ls adapters)")
    version = version or record.get("latest") or list(record["versions"])[-1]
    if version not in record["versions"]:
        raise HubError(f"{source}: {name} has no version {version!r}; versions: {', '.join(record['versions'])}")
    entry = validate_entry(record["versions"][version], name, source)
    if entry["version"] != version:  # parse_index refuses this already; an index built in memory may not be parsed
        raise HubError(f'{source}: index entry {name}@{version} says "version": {entry["version"]!r}; refused')
    return entry


def add_entry(index: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The index with ``entry`` published; a published version is never replaced."""
    validate_entry(entry, source="the entry to publish")
    record = index["adapters"].setdefault(entry["name"], {"latest": None, "versions": {}})
    if entry["version"] in record["versions"]:
        raise HubError(
            f"{entry['name']}@{entry['version']} is already published on this hub and is never overwritten; "
            f"push with another --version"
        )
    record["versions"][entry["version"]] = entry
    record["latest"] = entry["version"]
    return index


def next_version(index: dict[str, Any], name: str) -> str:
    """1, 2, 3, ... after the highest numeric version of ``name``."""
    versions = index["adapters"].get(name, {}).get("versions", {})
    numbers = [int(v) for v in versions if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def dump_index(index: dict[str, Any]) -> str:
    return json.dumps(index, indent=2, sort_keys=False) + "\n"
