"""The Hugging Face Hub, through ``huggingface_hub``: a zoo hub kept in an HF repository
(``zoo push RUN --hub hf://org/repo``, ``zoo pull NAME --hub hf://org/repo``), and PEFT-format
adapters pulled from one (``zoo pull hf://org/repo[@revision]``) for the methods peft shares with
zoo (LoRA, DoRA, IA3, prefix tuning). Only ``adapter_config.json`` and ``adapter_model.safetensors``
are fetched: never pickled weights, never code (no ``trust_remote_code``).

A push is one commit carrying the entry's files and the updated ``index.json``, made with
``parent_commit`` set to the commit the index was read at: when another push lands in between, the
Hub refuses the commit instead of letting it drop that push's entry; the index is then read again
and the commit made once more (or, when the version was taken meanwhile, refused with a clear error).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import DownloadError, HubError
from zoo.hub.index import INDEX_FILE, add_entry, dump_index, empty_index, parse_index
from zoo.hub.locations import Describe, Hub, read_index_file

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
CONFLICT_STATUS = (409, 412)
"""What the Hub answers a commit whose ``parent_commit`` is no longer the head of the branch."""


def _token_or_error(what: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError(
            f"{what} needs Hugging Face credentials: run `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN; "
            f"or push to a folder (--hub /path/to/hub) and publish that"
        )
    return token


def _fetch_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when a file cannot be had (network, offline, missing)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError)


def _status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


@dataclass(frozen=True)
class HfHub(Hub):
    """``hf://org/repo[@revision]``: a zoo hub in a Hugging Face model repository."""

    revision: str | None = None
    read_at: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """``{"commit": sha}`` of the index last read, so that an entry's files come from the same commit."""

    def api(self, token: str | None = None):
        from huggingface_hub import HfApi

        return HfApi(token=token)

    def download(self, filename: str, revision: str | None = None, api=None) -> Path:
        """``filename`` of the repository (at ``revision``, else the hub's) through the Hugging Face cache."""
        try:
            return Path(
                (api or self.api()).hf_hub_download(self.location, filename, revision=revision or self.revision)
            )
        except _fetch_errors() as error:
            raise DownloadError(
                f"{self}: could not fetch {filename} from the Hugging Face Hub ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200] if str(error) else ''}); without network access use a hub "
                f"already in the cache"
            ) from None

    def head_commit(self, api=None) -> str:
        """The commit the hub's revision points at now."""
        try:
            return (api or self.api()).repo_info(self.location, revision=self.revision).sha
        except _fetch_errors() as error:
            raise DownloadError(
                f"{self}: could not read the repository on the Hugging Face Hub ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200] if str(error) else ''}); without network access use a hub "
                f"already in the cache"
            ) from None

    def read_index_bytes(self) -> bytes:
        api = self.api()
        commit = self.head_commit(api)
        text = read_index_file(self.download(INDEX_FILE, commit, api), f"{self}/{INDEX_FILE}")
        self.read_at["commit"] = commit
        return text

    def fetch_file(self, entry: dict[str, Any], item: dict[str, Any], destination: Path) -> None:
        from zoo.catalog.download import copy_verified

        source = self.download(self.remote_path(entry, item), self.read_at.get("commit"))
        copy_verified(source, destination, item["sha256"], item["size"], self.file_label(entry, item))

    def _index_at_head(self, api) -> tuple[str, dict[str, Any]]:
        """(the head commit, the index at that commit); an empty index when the repository has none yet."""
        from huggingface_hub.errors import EntryNotFoundError

        commit = self.head_commit(api)
        try:
            path = api.hf_hub_download(self.location, INDEX_FILE, revision=commit)
        except EntryNotFoundError:  # a new hub; any other failure stops the push (it would lose entries)
            return commit, empty_index()
        except _fetch_errors() as error:
            raise DownloadError(
                f"{self}: could not read {INDEX_FILE} to add to it ({type(error).__name__}); nothing was pushed"
            ) from None
        return commit, parse_index(read_index_file(Path(path), f"{self}/{INDEX_FILE}"), f"{self}/{INDEX_FILE}")

    def publish(self, describe: Describe, log: Callable[[str], None]) -> dict[str, Any]:
        """One commit: the entry's files and the index, on top of the commit the index was read at."""
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.errors import HfHubHTTPError

        api = self.api(_token_or_error(f"pushing to {self}"))
        try:
            api.create_repo(self.location, exist_ok=True)
        except HfHubHTTPError as error:
            raise HubError(
                f"{self}: the repository cannot be created or written ({error}); nothing was pushed"
            ) from None
        parent, index = self._index_at_head(api)
        entry, contents = describe(index)
        files = [
            CommitOperationAdd(path_in_repo=f"{entry['path']}/{relative}", path_or_fileobj=data)
            for relative, data in contents.items()
        ]
        if self._commit(api, entry, files, index, parent):
            return entry
        label = f"{entry['name']}@{entry['version']}"
        log(f"{self} changed while {label} was being pushed (another push landed); reading its index again")
        parent, index = self._index_at_head(api)
        if entry["version"] in index["adapters"].get(entry["name"], {}).get("versions", {}):
            raise HubError(
                f"{label} was published on {self} by another push meanwhile; nothing was published: push again "
                f"(without --version, the next free version is chosen)"
            )
        if self._commit(api, entry, files, index, parent):
            return entry
        raise HubError(f"{self} changed again while {label} was being pushed; nothing was published: push again")

    def _commit(self, api, entry: dict[str, Any], files: list, index: dict[str, Any], parent: str) -> bool:
        """The files and ``index`` with ``entry`` added, in one commit on top of ``parent``; False when the
        revision has moved past ``parent`` (nothing was committed)."""
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.errors import HfHubHTTPError

        label = f"{entry['name']}@{entry['version']}"
        published = dump_index(add_entry(index, entry)).encode()
        try:
            api.create_commit(
                self.location,
                operations=[*files, CommitOperationAdd(path_in_repo=INDEX_FILE, path_or_fileobj=published)],
                commit_message=f"zoo push {label}",
                revision=self.revision,
                parent_commit=parent,
            )
        except HfHubHTTPError as error:
            if _status(error) in CONFLICT_STATUS:
                return False
            raise HubError(f"{self}: the push of {label} failed ({error}); nothing was published") from None
        return True


def pull_peft_adapter(reference: str, log: Callable[[str], None]) -> tuple[Path, dict, Path]:
    """``hf://org/repo[@revision]``: a PEFT adapter's two files into the HF cache; returns the snapshot
    folder, an index-like entry, and the folder of the two files, which loads with
    ``zoo.peft.load_adapter`` onto the base model its config names."""
    from zoo.hub.locations import parse_hub

    hub = parse_hub(reference)
    paths = [hub.download(filename) for filename in PEFT_FILES]
    config = json.loads(paths[0].read_text())
    if not isinstance(config, dict) or "peft_type" not in config:
        raise HubError(f"{reference}: adapter_config.json is not a PEFT adapter config (no peft_type)")
    log(
        f"{reference}: PEFT {config['peft_type']} adapter for {config.get('base_model_name_or_path')} in {paths[0].parent}"
    )
    entry = {"name": hub.location, "version": hub.revision or "main", "peft": config}
    return paths[0].parent.parent, entry, paths[0].parent
