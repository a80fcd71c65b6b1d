"""``pull(name[@version])``: an adapter from a hub into the local cache, verified.

Cache layout (``hub/`` under the cache root, :mod:`zoo.cache`: ``$ZOO_CACHE_DIR``, else ``~/.cache/zoo``)::

    <hub key>/index.json                          the hub's index as last read (for offline use)
    <hub key>/adapters/<name>/<version>/          a complete, verified adapter (renamed into place)
    <hub key>/adapters/<name>/<version>.partial/  files being fetched; kept across interruptions
    <hub key>/locks/<name>@<version>.lock         one process fetches an adapter at a time

Every file is fetched by the hub (:meth:`zoo.hub.locations.Hub.fetch_file`: copied from a folder,
downloaded over HTTP, or through ``huggingface_hub``) and checked against the index's size and sha256
before it is kept; an interrupted HTTP download resumes with a Range request; the adapter's folder appears in one rename once
every file is verified, so a reader never sees half an adapter, and only once its ``config.yaml``
passes :func:`zoo.hub.pulled_config.read_pulled_config` (an entry asking for a backbone option the
backbone does not allow from a hub is refused here, and nothing of it is kept). Offline
(``ZOO_OFFLINE=1`` or no network) an adapter already in the cache is served from it, and the
message says so.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.catalog.download import sha256_of
from zoo.errors import DownloadError, HubError
from zoo.files import swap_directory
from zoo.hub.index import find_entry, validate_entry
from zoo.hub.locations import Hub, offline_requested, parse_hub, say_to_stderr, search_path
from zoo.hub.pulled_config import read_pulled_config

ENTRY_FILE = "entry.json"
"""Written next to the pulled files: the index entry they were verified against."""


@dataclass(frozen=True)
class PulledAdapter:
    dir: Path
    entry: dict[str, Any]
    hub: str
    adapter_path: Path | None = None
    """Where the adapter's two files are, when not ``dir/adapter`` (a PEFT adapter from the HF Hub)."""

    @property
    def name(self) -> str:
        return f"{self.entry['name']}@{self.entry['version']}"

    @property
    def adapter_dir(self) -> Path:
        return self.adapter_path or self.dir / "adapter"

    @property
    def reference_predictions(self) -> list[dict[str, Any]]:
        """``[{"input", "output"}]`` recorded when the adapter was pushed (empty when the entry has none)."""
        return list(self.entry.get("reference_predictions") or [])


def adapter_cache_dir(hub: Hub, entry: dict[str, Any]) -> Path:
    return hub.cache_dir / "adapters" / entry["name"] / entry["version"]


def _verified(folder: Path, entry: dict[str, Any]) -> bool:
    """Every listed file present with its size and sha256 (the adapter files are small)."""
    for item in entry["files"]:
        path = folder / item["path"]
        if not path.is_file() or path.stat().st_size != item["size"] or sha256_of(path) != item["sha256"]:
            return False
    return True


def _fetch(hub: Hub, entry: dict[str, Any], target: Path, log: Callable[[str], None]) -> None:
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    for item in entry["files"]:
        destination = staging / item["path"]
        if (
            destination.is_file()
            and destination.stat().st_size == item["size"]
            and sha256_of(destination) == item["sha256"]
        ):
            continue  # verified by an earlier, interrupted pull
        destination.parent.mkdir(parents=True, exist_ok=True)
        hub.fetch_file(entry, item, destination)
    if "config.yaml" in {item["path"] for item in entry["files"]}:
        try:
            read_pulled_config(staging, entry, f"{entry['name']}@{entry['version']}")
        except HubError:
            shutil.rmtree(staging)  # verified files of a refused entry: nothing of it is kept
            raise
    (staging / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
    swap_directory(staging, target)


def pull_entry(hub: Hub, entry: dict[str, Any], log: Callable[[str], None] = say_to_stderr) -> PulledAdapter:
    """Fetch one checked entry of ``hub`` into the cache (or find it there) and return it."""
    from filelock import FileLock

    entry = validate_entry(entry, source=str(hub))
    target = adapter_cache_dir(hub, entry)
    label = f"{entry['name']}@{entry['version']}"
    lock_path = hub.cache_dir / "locks" / f"{entry['name'].replace('/', '__')}@{entry['version']}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path), timeout=600):
        if target.is_dir():
            if _verified(target, entry):
                log(f"{label}: in the cache ({target}), sha256 verified")
                return PulledAdapter(target, entry, str(hub))
            log(f"{label}: the cached copy in {target} does not match the index; fetching it again")
            shutil.rmtree(target)
        if offline_requested() and hub.is_remote:
            raise HubError(
                f"{label} is not in the cache ({target}) and ZOO_OFFLINE is set; pull it once with network access"
            )
        _fetch(hub, entry, target, log)
    log(f"{label}: pulled from {hub} into {target} ({len(entry['files'])} files, sha256 verified)")
    return PulledAdapter(target, entry, str(hub))


def cached_entry(hub: Hub, reference: str) -> dict[str, Any] | None:
    """The entry of a pulled adapter, read from the cache alone (for when the hub cannot be read)."""
    from zoo.hub.index import split_reference

    name, version = split_reference(reference)
    root = hub.cache_dir / "adapters" / name
    if not root.is_dir():
        return None
    folders = (
        [root / version]
        if version
        else sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")),
            key=lambda p: p.stat().st_mtime,
        )
    )
    for folder in reversed(folders):
        if (folder / ENTRY_FILE).is_file():
            try:
                entry = validate_entry(json.loads((folder / ENTRY_FILE).read_text()), name, str(folder / ENTRY_FILE))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a damaged cache entry: as if it were not there
            if entry["version"] == folder.name:
                return entry
    return None


def pull(
    reference: str, hub: str | os.PathLike | None = None, log: Callable[[str], None] | None = say_to_stderr
) -> PulledAdapter:
    """``name[@version]`` from ``hub`` (default: ``ZOO_HUB``'s hubs, then the default hub) into the cache.
    ``hf://org/repo[@revision]`` pulls a PEFT-format adapter from the Hugging Face Hub instead."""
    log = log or (lambda _message: None)
    if str(reference).startswith("hf://"):
        from zoo.hub.hf import pull_peft_adapter

        root, entry, adapter_path = pull_peft_adapter(parse_hub(str(reference)), log)
        return PulledAdapter(root, entry, str(reference), adapter_path)
    errors = []
    for candidate in search_path(hub):
        try:
            index = candidate.index(log)
        except (DownloadError, HubError) as error:
            cached = cached_entry(candidate, reference)
            if cached is None:
                errors.append(str(error))
                continue
            why = "offline" if isinstance(error, DownloadError) else f"the index of {candidate} is refused"
            log(f"{why} ({str(error)[:160]}): serving {cached['name']}@{cached['version']} from the cache")
            return pull_entry(candidate, cached, log)
        try:
            entry = find_entry(index, reference, str(candidate))
        except HubError as error:
            if "has no adapter" in str(error) and hub is None:
                errors.append(str(error))
                continue
            raise
        return pull_entry(candidate, entry, log)
    raise HubError("; ".join(errors) or f"no hub has {reference}")
