"""The Hugging Face Hub, through ``huggingface_hub``: a zoo hub kept in an HF repository
(``zoo push RUN --hub hf://org/repo``), and PEFT-format adapters pulled from one
(``zoo pull hf://org/repo[@revision]``) for the methods peft shares with zoo (LoRA, DoRA, IA3,
prefix tuning). Only ``adapter_config.json`` and ``adapter_model.safetensors`` are fetched:
never pickled weights, never code (no ``trust_remote_code``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.errors import DownloadError, HubError
from zoo.hub.index import INDEX_FILE, add_entry, dump_index, empty_index, parse_index

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _token_or_error(what: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError(
            f"{what} needs Hugging Face credentials: run `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN; "
            f"or push to a folder (--hub /path/to/hub) and publish that"
        )
    return token


def push_to_hf(hub, run_dir: Path, name, version, licence, log, describe) -> dict[str, Any]:
    """Upload the files in one commit, then the updated index in a second one."""
    from huggingface_hub import HfApi

    token = _token_or_error(f"pushing to {hub}")
    api = HfApi(token=token)
    try:
        index = parse_index(Path(hub.hf_download(INDEX_FILE)).read_bytes(), f"{hub}/{INDEX_FILE}")
    except DownloadError:
        index = empty_index()  # a new hub (or an unreadable one: creating the repo below says which)
    entry, contents = describe(run_dir, name, version, licence, index, log)
    api.create_repo(hub.location, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as staging:  # removed even when the upload fails
        for relative, data in contents.items():
            destination = Path(staging) / entry["path"] / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
        api.upload_folder(
            folder_path=staging,
            repo_id=hub.location,
            revision=hub.revision,
            commit_message=f"zoo push {entry['name']}@{entry['version']}: files",
        )
    api.upload_file(
        path_or_fileobj=dump_index(add_entry(index, entry)).encode(),
        path_in_repo=INDEX_FILE,
        repo_id=hub.location,
        revision=hub.revision,
        commit_message=f"zoo push {entry['name']}@{entry['version']}: index",
    )
    return entry


def pull_peft_adapter(reference: str, log: Callable[[str], None]) -> tuple[Path, dict, Path]:
    """``hf://org/repo[@revision]``: a PEFT adapter's two files into the HF cache; returns the snapshot
    folder, an index-like entry, and the folder of the two files, which loads with
    ``zoo.peft.load_adapter`` onto the base model its config names."""
    from zoo.hub.locations import parse_hub

    hub = parse_hub(reference)
    paths = [Path(hub.hf_download(filename)) for filename in PEFT_FILES]
    config = json.loads(paths[0].read_text())
    if not isinstance(config, dict) or "peft_type" not in config:
        raise HubError(f"{reference}: adapter_config.json is not a PEFT adapter config (no peft_type)")
    log(
        f"{reference}: PEFT {config['peft_type']} adapter for {config.get('base_model_name_or_path')} in {paths[0].parent}"
    )
    entry = {"name": hub.location, "version": hub.revision or "main", "peft": config}
    return paths[0].parent.parent, entry, paths[0].parent
