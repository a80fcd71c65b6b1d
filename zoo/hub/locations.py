"""Where hubs are: a folder, an http(s) URL, or ``hf://org/repo[@revision]``; and which ones are searched.

``--hub URL`` names one hub. Without it, the hubs in ``ZOO_HUB`` (separated by commas) are
searched in order, then the default hub that ships with zoo (``zoo/hub/default``). The index of
every remote hub read is kept in the cache, so ``ZOO_OFFLINE=1`` (or no network) still lists and
pulls what was pulled before, and says so.

Reading a hub is bounded: an ``index.json`` larger than :data:`MAX_INDEX_BYTES` is refused without
being read whole (a server's body is streamed and cut at the limit, whatever its headers claim),
and a request has an overall deadline (``ZOO_HTTP_DEADLINE_S``, see :mod:`zoo.catalog.bounded_http`)
as well as one per read, so a server trickling bytes cannot keep a pull hanging.
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
MAX_INDEX_BYTES = 32 << 20
"""An index of a few thousand adapters is a few MiB; anything past this is refused unread."""
INDEX_READ_TIMEOUT_S = 30.0


def _too_large(what: str, size: int | str | None) -> HubError:
    """``size``: the declared size, or None for a body that ran past the limit while it was read."""
    if size is None:
        return HubError(
            f"{what} runs past the {MAX_INDEX_BYTES} bytes an index.json may have; refused, and read no further "
            f"(is this URL a zoo hub?)"
        )
    return HubError(
        f"{what} is {size} bytes, more than the {MAX_INDEX_BYTES} bytes an index.json may have; refused without "
        f"reading it (is this URL a zoo hub?)"
    )


def read_index_file(path: Path, what: str) -> bytes:
    """A local index file, refused unread when it is too large."""
    size = path.stat().st_size
    if size > MAX_INDEX_BYTES:
        raise _too_large(what, size)
    return path.read_bytes()


def fetch_index(url: str, what: str, deadline_s: float | None = None) -> bytes:
    """``url``'s body, at most :data:`MAX_INDEX_BYTES` of it, within the request deadline."""
    import requests

    from zoo.catalog.bounded_http import BoundedGet

    try:
        with BoundedGet(url, deadline_s=deadline_s, timeout=INDEX_READ_TIMEOUT_S) as request:
            request.response.raise_for_status()
            declared = request.response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_INDEX_BYTES:
                raise _too_large(what, declared)
            body = bytearray()
            for chunk in request.chunks(1 << 16):
                body += chunk
                if len(body) > MAX_INDEX_BYTES:
                    raise _too_large(what, None)
            return bytes(body)
    except requests.RequestException as error:
        raise DownloadError(f"{what}: could not read it ({type(error).__name__}: {error})") from None


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
            return read_index_file(path, f"{self}: {path}")
        if self.kind == "http":
            return fetch_index(f"{self.location}/{INDEX_FILE}", f"{self}/{INDEX_FILE}")
        return read_index_file(Path(self.hf_download(INDEX_FILE)), f"{self}/{INDEX_FILE}")

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
        return parse_index(read_index_file(cached, str(cached)), str(cached))


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


def search_path(
    hub: str | os.PathLike | None = None, on_bad_url: Callable[[str, HubError], None] | None = None
) -> list[Hub]:
    """``[hub]`` when one is named; else the hubs of ``ZOO_HUB`` then the default hub. ``on_bad_url(item,
    error)``: called for a ``ZOO_HUB`` item that is not a hub URL, which is skipped; without it, the error
    is raised."""
    if hub:
        return [parse_hub(hub)]
    hubs = []
    for item in os.environ.get("ZOO_HUB", "").split(","):
        if not item.strip():
            continue
        try:
            hubs.append(parse_hub(item.strip()))
        except HubError as error:
            if on_bad_url is None:
                raise
            on_bad_url(item.strip(), error)
    if DEFAULT_HUB.is_dir():
        hubs.append(parse_hub(DEFAULT_HUB))
    if not hubs:
        raise HubError(f"no hub to search: pass --hub URL or set ZOO_HUB (the default hub {DEFAULT_HUB} is missing)")
    return hubs
