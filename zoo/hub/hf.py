"""The Hugging Face Hub, through ``huggingface_hub``: what :class:`zoo.hub.locations.HfHub` (a zoo hub
kept in an HF repository: ``zoo push RUN --hub hf://org/repo``, ``zoo pull NAME --hub hf://org/repo``)
asks of it, and PEFT-format adapters pulled from one (``zoo pull hf://org/repo[@revision]``) for the
methods peft shares with zoo (LoRA, DoRA, IA3, prefix tuning). Only ``adapter_config.json`` and
``adapter_model.safetensors`` are fetched for those: never pickled weights, never code (no
``trust_remote_code``).

A push is one commit carrying the entry's files and the updated ``index.json``, made with
``parent_commit`` set to the commit the index was read at (:func:`commit_entry`): when another push
lands in between, the Hub refuses the commit instead of letting it drop that push's entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.errors import DownloadError, HubError
from zoo.hub.index import INDEX_FILE, add_entry, dump_index

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
CONFLICT_STATUS = (409, 412)
"""What the Hub answers a commit whose ``parent_commit`` is no longer the head of the branch."""


def api(token: str | None = None):
    from huggingface_hub import HfApi

    return HfApi(token=token)


def authenticated_api(what: str):
    """An ``HfApi`` with the user's token, or a clear error saying how to log in."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError(
            f"{what} needs Hugging Face credentials: run `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN; "
            f"or push to a folder (--hub /path/to/hub) and publish that"
        )
    return api(token)


def _fetch_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when a file cannot be had (network, offline, missing)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError)


def _unreachable(what: str, error: BaseException) -> DownloadError:
    first_line = str(error).splitlines()[0][:200] if str(error) else ""
    return DownloadError(
        f"{what} ({type(error).__name__}: {first_line}); without network access use a hub already in the cache"
    )


def download(client, repo: str, filename: str, revision: str | None, what: str) -> Path:
    """``filename`` of ``repo`` at ``revision`` through the Hugging Face cache."""
    try:
        return Path(client.hf_hub_download(repo, filename, revision=revision))
    except _fetch_errors() as error:
        raise _unreachable(f"{what}: could not fetch {filename} from the Hugging Face Hub", error) from None


def head_commit(client, repo: str, revision: str | None, what: str) -> str:
    """The commit ``revision`` (default: the main branch) of ``repo`` points at now."""
    try:
        return client.repo_info(repo, revision=revision).sha
    except _fetch_errors() as error:
        raise _unreachable(f"{what}: could not read the repository on the Hugging Face Hub", error) from None


def index_file_at(client, repo: str, commit: str, what: str) -> Path | None:
    """``index.json`` at ``commit``; None when the repository has none (a new hub). Any other failure is
    an error: pushing on top of an index that could not be read would drop its entries."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(client.hf_hub_download(repo, INDEX_FILE, revision=commit))
    except EntryNotFoundError:
        return None
    except _fetch_errors() as error:
        raise DownloadError(f"{what}: could not read {INDEX_FILE} to add to it ({type(error).__name__})") from None


def create_repo(client, repo: str, what: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        client.create_repo(repo, exist_ok=True)
    except HfHubHTTPError as error:
        raise HubError(f"{what}: the repository cannot be created or written ({error}); nothing was pushed") from None


def commit_entry(
    client,
    repo: str,
    revision: str | None,
    entry: dict[str, Any],
    contents: dict[str, bytes],
    index: dict[str, Any],
    parent: str,
    what: str,
) -> bool:
    """The entry's files and ``index`` with the entry added, in one commit on top of ``parent``; False
    when the revision has moved past ``parent`` meanwhile (then nothing was committed)."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    label = f"{entry['name']}@{entry['version']}"
    operations = [
        CommitOperationAdd(path_in_repo=f"{entry['path']}/{relative}", path_or_fileobj=data)
        for relative, data in contents.items()
    ]
    published = dump_index(add_entry(index, entry)).encode()  # refuses a version already in the index
    operations.append(CommitOperationAdd(path_in_repo=INDEX_FILE, path_or_fileobj=published))
    try:
        client.create_commit(
            repo,
            operations=operations,
            commit_message=f"zoo push {label}",
            revision=revision,
            parent_commit=parent,
        )
    except HfHubHTTPError as error:
        if getattr(getattr(error, "response", None), "status_code", None) in CONFLICT_STATUS:
            return False
        raise HubError(f"{what}: the push of {label} failed ({error}); nothing was published") from None
    return True


def pull_peft_adapter(hub, log: Callable[[str], None]) -> tuple[Path, dict, Path]:
    """A PEFT adapter's two files from ``hub`` (an :class:`zoo.hub.locations.HfHub`, ``hf://org/repo[@revision]``)
    into the HF cache; returns the snapshot folder, an index-like entry, and the folder of the two files,
    which loads with ``zoo.peft.load_adapter`` onto the base model its config names."""
    client = api()
    paths = [download(client, hub.location, filename, hub.revision, str(hub)) for filename in PEFT_FILES]
    config = json.loads(paths[0].read_text())
    if not isinstance(config, dict) or "peft_type" not in config:
        raise HubError(f"{hub}: adapter_config.json is not a PEFT adapter config (no peft_type)")
    log(f"{hub}: PEFT {config['peft_type']} adapter for {config.get('base_model_name_or_path')} in {paths[0].parent}")
    entry = {"name": hub.location, "version": hub.revision or "main", "peft": config}
    return paths[0].parent.parent, entry, paths[0].parent
