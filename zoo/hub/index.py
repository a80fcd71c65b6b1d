"""A hub's ``index.json``: which adapters it has, and everything needed to trust one.

A hub is a static tree (a folder, any web server, or a Hugging Face Hub repository)::

    index.json                       {"schema_version": 1, "adapters": {NAME: {"latest": V, "versions": {V: ENTRY}}}}
    text/sst2-lora/1/adapter/adapter_config.json
    text/sst2-lora/1/adapter/adapter_model.safetensors
    text/sst2-lora/1/README.md, config.yaml, eval_results.json

An entry names its base backbone (zoo name, weights source and revision, and a fingerprint of
the weights it was trained on), the method and its configuration, the dataset (files, checksums,
split sizes), the metrics with the split they were measured on, the recipe and command, the
licence, and every file with its size and sha256. Nothing else on the server is ever fetched:
:func:`validate_entry` refuses an entry whose paths are absolute or climb out of its folder,
whose weights are not safetensors, or which lacks the adapter's two files.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any

from zoo.errors import HubError

SCHEMA_VERSION = 1
INDEX_FILE = "index.json"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*/[a-z0-9][a-z0-9_.]*-[a-z0-9][a-z0-9_]*$")
"""``<domain>/<task>-<method>``, lowercase: ``text/agnews-lora``."""
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
ADAPTER_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")
ALLOWED_SUFFIXES = (".json", ".safetensors", ".yaml", ".md")
"""What an entry may list: no pickles (``.bin``, ``.pt``, ``.pkl``), no code."""
MAX_FILE_BYTES = 8 << 30


def empty_index() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "adapters": {}}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise HubError(f"adapter name {name!r} is not <domain>/<task>-<method> in lowercase (e.g. text/agnews-lora)")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise HubError(f"version {version!r} must be 1-64 letters, digits, '.', '_' or '-' (e.g. 1 or 2024.06)")
    return version


def safe_relative_path(path: Any, where: str) -> str:
    """A POSIX relative path that stays inside its folder; anything else is refused."""
    if not isinstance(path, str) or not path:
        raise HubError(f"{where}: file path {path!r} must be a non-empty string")
    pure = PurePosixPath(path)
    if "\\" in path or "\x00" in path or pure.is_absolute() or re.match(r"^[A-Za-z]:", path):
        raise HubError(f"{where}: file path {path!r} is absolute; an entry may only name files inside its own folder")
    if any(part in ("..", ".", "") for part in path.split("/")):
        raise HubError(f"{where}: file path {path!r} contains '..', '.' or an empty part; refused")
    return pure.as_posix()


def validate_entry(entry: Any, name: str | None = None) -> dict[str, Any]:
    """Check an index entry before anything of it is fetched; returns it."""
    if not isinstance(entry, dict):
        raise HubError(f"index entry {name!r} is not a JSON object")
    where = f"index entry {entry.get('name', name)}@{entry.get('version')}"
    check_name(entry.get("name"))
    check_version(entry.get("version"))
    if name is not None and entry["name"] != name:
        raise HubError(f"{where}: listed under {name!r} but names itself {entry['name']!r}")
    safe_relative_path(entry.get("path"), where)
    files = entry.get("files")
    if not isinstance(files, list) or not files:
        raise HubError(f"{where}: 'files' must list the entry's files with their size and sha256")
    seen = set()
    for item in files:
        if not isinstance(item, dict):
            raise HubError(f"{where}: every item of 'files' must be an object with path, size and sha256")
        path = safe_relative_path(item.get("path"), where)
        if not path.endswith(ALLOWED_SUFFIXES):
            raise HubError(
                f"{where}: file {path!r} is not allowed; a hub serves only {', '.join(ALLOWED_SUFFIXES)} files "
                f"(weights as safetensors, never pickles)"
            )
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
            raise HubError(f"{where}: file {path!r} has no valid size ({size!r})")
        if not isinstance(item.get("sha256"), str) or not SHA256_PATTERN.match(item["sha256"]):
            raise HubError(f"{where}: file {path!r} has no valid sha256 ({item.get('sha256')!r})")
        if path in seen:
            raise HubError(f"{where}: file {path!r} is listed twice")
        seen.add(path)
    missing = [f for f in ADAPTER_FILES if f not in seen]
    if missing:
        raise HubError(f"{where}: the entry does not list {', '.join(missing)}; an adapter needs both")
    backbone = entry.get("backbone")
    if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str):
        raise HubError(f"{where}: 'backbone' must name the base backbone")
    if not isinstance(backbone.get("fingerprint"), str) or not backbone["fingerprint"].startswith("sha256:"):
        raise HubError(f"{where}: 'backbone.fingerprint' (sha256 of the base weights) is missing")
    return entry


def parse_index(text: str | bytes, source: str) -> dict[str, Any]:
    """The parsed and checked index; an entry that is unsafe makes the whole index refused only when pulled."""
    try:
        index = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HubError(f"{source} is not valid JSON ({error})") from None
    if not isinstance(index, dict) or not isinstance(index.get("adapters"), dict):
        raise HubError(f"{source} is not a zoo hub index (an object with 'schema_version' and 'adapters')")
    version = index.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise HubError(f"{source}: schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise HubError(f"{source} uses index schema {version}; this zoo reads up to {SCHEMA_VERSION}: upgrade zoo")
    for name, record in index["adapters"].items():
        if not isinstance(record, dict) or not isinstance(record.get("versions"), dict):
            raise HubError(f"{source}: adapter {name!r} has no 'versions' object")
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
    return validate_entry(record["versions"][version], name)


def add_entry(index: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The index with ``entry`` published; a published version is never replaced."""
    validate_entry(entry)
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
