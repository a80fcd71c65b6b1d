"""Where hubs are: a folder, an http(s) URL, or ``hf://org/repo[@revision]``; and which ones are searched.

``--hub URL`` names one hub. Without it, the hubs in ``ZOO_HUB`` (separated by commas) are
searched in order, then the default hub that ships with zoo (``zoo/hub/default``). The index of
every remote hub read is kept in the cache, so ``ZOO_OFFLINE=1`` (or no network) still lists and
pulls what was pulled before, and says so.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import DownloadError, HubError
from zoo.hub.index import INDEX_FILE, parse_index

DEFAULT_HUB = Path(__file__).resolve().parent / "default"


def cache_root() -> Path:
    """``$ZOO_CACHE_DIR/hub``, else ``~/.cache/zoo/hub``."""
    return Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "zoo").expanduser() / "hub"


def offline_requested() -> bool:
    return os.environ.get("ZOO_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def say_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class Hub:
    """One hub. ``url``: as the user wrote it; ``kind``: folder, http or hf."""

    url: str
    kind: str
    location: str
    revision: str | None = None

    @property
    def key(self) -> str:
        """A folder name for this hub in the cache: readable, and unique by a hash of the URL."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.location)[-40:].strip("_.") or "hub"
        return f"{slug}-{hashlib.sha256(self.url.encode()).hexdigest()[:10]}"

    @property
    def cache_dir(self) -> Path:
        return cache_root() / self.key

    @property
    def is_remote(self) -> bool:
        return self.kind != "folder"

    def __str__(self) -> str:
        return "the default hub" if self.kind == "folder" and Path(self.location) == DEFAULT_HUB else self.url

    # -- reading ----------------------------------------------------------------------------
    def read_index_text(self) -> bytes:
        if self.kind == "folder":
            path = Path(self.location) / INDEX_FILE
            if not path.is_file():
                raise HubError(f"{self}: {path} does not exist; a hub folder has an {INDEX_FILE} (made by zoo push)")
            return path.read_bytes()
        if self.kind == "http":
            import requests

            try:
                response = requests.get(f"{self.location}/{INDEX_FILE}", timeout=30)
                response.raise_for_status()
            except requests.RequestException as error:
                raise DownloadError(f"{self}: could not read {INDEX_FILE} ({type(error).__name__}: {error})") from None
            return response.content
        return Path(self.hf_download(INDEX_FILE)).read_bytes()

    def hf_download(self, filename: str) -> str:
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        except ImportError as error:  # pragma: no cover - a declared dependency
            raise HubError(f"{self}: huggingface_hub is needed for hf:// hubs ({error})") from None
        try:
            return hf_hub_download(self.location, filename, revision=self.revision)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
            raise DownloadError(
                f"{self}: could not fetch {filename} from the Hugging Face Hub ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}); without network access use a hub already in the cache"
            ) from None

    def index(self, log: Callable[[str], None] = say_to_stderr) -> dict[str, Any]:
        """The hub's index: read afresh (and cached) when possible; the cached copy offline, saying so."""
        if not self.is_remote:
            return parse_index(self.read_index_text(), f"{self} ({Path(self.location) / INDEX_FILE})")
        cached = self.cache_dir / INDEX_FILE
        if not offline_requested():
            try:
                text = self.read_index_text()
            except DownloadError as error:
                if not cached.is_file():
                    raise
                log(f"offline ({str(error)[:160]}): using the cached index of {self} from {cached}")
            else:
                index = parse_index(text, f"{self}/{INDEX_FILE}")
                from zoo.experiment.run_dir import atomic_write_text

                atomic_write_text(cached, text.decode())
                return index
        elif not cached.is_file():
            raise HubError(
                f"ZOO_OFFLINE is set and {self} has never been read on this machine: nothing cached in {cached}"
            )
        else:
            log(f"offline (ZOO_OFFLINE): using the cached index of {self}")
        return parse_index(cached.read_bytes(), str(cached))


def parse_hub(url: str | os.PathLike) -> Hub:
    text = str(url)
    if text.startswith("hf://"):
        repo, _, revision = text[len("hf://") :].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise HubError(f"hub {text!r}: write a Hugging Face Hub repository as hf://org/repo[@revision]")
        return Hub(text, "hf", repo, revision or None)
    if text.startswith(("http://", "https://")):
        return Hub(text.rstrip("/"), "http", text.rstrip("/"))
    text = text.removeprefix("file://")
    path = Path(text).expanduser().resolve()
    return Hub(str(path), "folder", str(path))


def search_path(hub: str | os.PathLike | None = None) -> list[Hub]:
    """``[hub]`` when one is named; else the hubs of ``ZOO_HUB`` then the default hub."""
    if hub:
        return [parse_hub(hub)]
    hubs = [parse_hub(item.strip()) for item in os.environ.get("ZOO_HUB", "").split(",") if item.strip()]
    if DEFAULT_HUB.is_dir():
        hubs.append(parse_hub(DEFAULT_HUB))
    if not hubs:
        raise HubError(f"no hub to search: pass --hub URL or set ZOO_HUB (the default hub {DEFAULT_HUB} is missing)")
    return hubs
