"""Where hubs are: a folder, an http(s) URL, or ``hf://org/repo[@revision]``; and which ones are searched.

Each kind of hub is a :class:`Hub`: :class:`FolderHub`, :class:`HttpHub` and :class:`HfHub`
(through ``huggingface_hub``, :mod:`zoo.hub.hf`). A hub reads its index, fetches one file of an entry into the cache
(verified against the entry's size and sha256), and publishes an entry with its files
(a folder and the Hugging Face Hub; an HTTP hub is read-only). :func:`parse_hub` makes one from a URL.

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
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.cache import cache_dir
from zoo.errors import ConfigError, DownloadError, HubError
from zoo.files import atomic_write_bytes, atomic_write_text
from zoo.hub.index import INDEX_FILE, add_entry, dump_index, empty_index, parse_index

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
    """Where pulled adapters and the indexes of remote hubs are kept: ``hub/`` under :func:`zoo.cache.cache_root`."""
    return cache_dir("hub")


def offline_requested() -> bool:
    return os.environ.get("ZOO_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def say_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


Describe = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, bytes]]]
"""``describe(index) -> (entry, contents)``: the entry to publish, made against the hub's current index
(which picks the next free version), and its files' contents by path under the entry's folder."""


@dataclass(frozen=True)
class Hub(ABC):
    """One hub. ``url``: as the user wrote it; ``location``: the folder, base URL or ``org/repo``."""

    url: str
    location: str

    is_remote = True
    """Its index and files come over the network (and are kept in the cache for offline use)."""

    @property
    def key(self) -> str:
        """A folder name for this hub in the cache: readable, and unique by a hash of the URL."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.location)[-40:].strip("_.") or "hub"
        return f"{slug}-{hashlib.sha256(self.url.encode()).hexdigest()[:10]}"

    @property
    def cache_dir(self) -> Path:
        return cache_root() / self.key

    def __str__(self) -> str:
        return self.url

    # -- what each kind of hub does ----------------------------------------------------------
    @abstractmethod
    def read_index_bytes(self) -> bytes:
        """The hub's ``index.json`` as it is now, at most :data:`MAX_INDEX_BYTES` of it."""

    @abstractmethod
    def fetch_file(self, entry: dict[str, Any], item: dict[str, Any], destination: Path) -> None:
        """The file ``item`` (one of ``entry["files"]``) at ``destination``, with the size and sha256 that
        ``item`` declares; a file that differs raises :class:`zoo.errors.IntegrityError` and is not kept."""

    @abstractmethod
    def publish(self, describe: Describe, log: Callable[[str], None]) -> dict[str, Any]:
        """Publish the entry ``describe`` makes against the current index: its files, then the index that
        lists it, so that a reader never sees an entry whose files are missing. Returns the entry."""

    # -- shared ------------------------------------------------------------------------------
    def index(self, log: Callable[[str], None] = say_to_stderr) -> dict[str, Any]:
        """The hub's index: read afresh (and cached) when possible; the cached copy offline, saying so."""
        cached = self.cache_dir / INDEX_FILE
        if not offline_requested():
            try:
                text = self.read_index_bytes()
            except DownloadError as error:
                if not cached.is_file():
                    raise
                log(f"offline ({str(error)[:160]}): using the cached index of {self} from {cached}")
            else:
                index = parse_index(text, f"{self}/{INDEX_FILE}")
                atomic_write_text(cached, text.decode())
                return index
        elif not cached.is_file():
            raise HubError(
                f"ZOO_OFFLINE is set and {self} has never been read on this machine: nothing cached in {cached}"
            )
        else:
            log(f"offline (ZOO_OFFLINE): using the cached index of {self}")
        return parse_index(read_index_file(cached, str(cached)), str(cached))

    @staticmethod
    def remote_path(entry: dict[str, Any], item: dict[str, Any]) -> str:
        return f"{entry['path']}/{item['path']}"

    @staticmethod
    def file_label(entry: dict[str, Any], item: dict[str, Any]) -> str:
        return f"{entry['name']}@{entry['version']} file {item['path']}"


TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")
"""``.<file>.<random>.tmp``: what :func:`zoo.files.atomic_file` writes beside a file before renaming it."""
PUBLISHED_MODE = 0o644
"""A hub folder is meant to be served: its files are readable by a web server whatever the umask."""


@dataclass(frozen=True)
class FolderHub(Hub):
    """A folder on this machine (or a mounted share): read in place, published under a lock."""

    is_remote = False

    def __str__(self) -> str:
        return "the default hub" if Path(self.location) == DEFAULT_HUB else self.url

    def read_index_bytes(self) -> bytes:
        path = Path(self.location) / INDEX_FILE
        if not path.is_file():
            raise HubError(f"{self}: {path} does not exist; a hub folder has an {INDEX_FILE} (made by zoo push)")
        return read_index_file(path, f"{self}: {path}")

    def index(self, log: Callable[[str], None] = say_to_stderr) -> dict[str, Any]:
        return parse_index(self.read_index_bytes(), f"{self} ({Path(self.location) / INDEX_FILE})")

    def fetch_file(self, entry: dict[str, Any], item: dict[str, Any], destination: Path) -> None:
        from zoo.catalog.download import copy_verified

        what = self.file_label(entry, item)
        root = Path(self.location).resolve()
        source = (root / self.remote_path(entry, item)).resolve()
        if not source.is_relative_to(root):  # a symlink out of the hub
            raise HubError(f"{what}: {source} lies outside the hub folder; refused")
        copy_verified(source, destination, item["sha256"], item["size"], what)

    def publish(self, describe: Describe, log: Callable[[str], None]) -> dict[str, Any]:
        """Under a lock on the folder (which also lets it remove what a killed push left): files first, the
        index last, each written atomically."""
        from filelock import FileLock

        root = Path(self.location)
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / ".zoo-push.lock"), timeout=600):
            index_path = root / INDEX_FILE
            self._remove_leftovers(root, log)
            index = (
                parse_index(read_index_file(index_path, str(index_path)), str(index_path))
                if index_path.is_file()
                else empty_index()
            )
            entry, contents = describe(index)
            for relative, data in contents.items():  # files first ...
                atomic_write_bytes(root / entry["path"] / relative, data, permissions=PUBLISHED_MODE)
            atomic_write_text(
                index_path, dump_index(add_entry(index, entry)), permissions=PUBLISHED_MODE
            )  # ... the index last
        return entry

    @staticmethod
    def _remove_leftovers(root: Path, log: Callable[[str], None]) -> None:
        """Temporary files that a killed push left in the hub folder (called under the push lock, so no
        push is writing them now)."""
        for path in sorted(root.rglob(".*.tmp")):
            if path.is_file() and not path.is_symlink() and TEMPORARY_NAME.match(path.name):
                path.unlink()
                log(f"removed {path.relative_to(root)}, left by an interrupted push")


@dataclass(frozen=True)
class HttpHub(Hub):
    """A hub folder served over http(s): read-only; reads are bounded, downloads resume."""

    def read_index_bytes(self) -> bytes:
        return fetch_index(f"{self.location}/{INDEX_FILE}", f"{self}/{INDEX_FILE}")

    def fetch_file(self, entry: dict[str, Any], item: dict[str, Any], destination: Path) -> None:
        from zoo.catalog import download

        url = f"{self.location}/{self.remote_path(entry, item)}"
        download.download_resumable(url, destination, item["sha256"], item["size"], self.file_label(entry, item))

    def publish(self, describe: Describe, log: Callable[[str], None]) -> dict[str, Any]:
        raise ConfigError(
            f"--hub {self.url}: an HTTP hub is read-only; zoo pushes to a folder or to hf://org/repo. To serve a hub "
            f"over HTTP, push to a folder and publish that folder with any static web server"
        )


@dataclass(frozen=True)
class HfHub(Hub):
    """``hf://org/repo[@revision]``: a zoo hub in a Hugging Face model repository. A pull fetches the files
    of the commit its index was read at; a push is one commit of the files and the index, on top of the
    commit the index was read at, read again once when another push landed in between."""

    revision: str | None = None
    read_at: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """``{"commit": sha}`` of the index last read."""

    def read_index_bytes(self) -> bytes:
        from zoo.hub import hf

        client = hf.api()
        commit = hf.head_commit(client, self.location, self.revision, str(self))
        path = hf.download(client, self.location, INDEX_FILE, commit, str(self))
        text = read_index_file(path, f"{self}/{INDEX_FILE}")
        self.read_at["commit"] = commit
        return text

    def fetch_file(self, entry: dict[str, Any], item: dict[str, Any], destination: Path) -> None:
        from zoo.catalog.download import copy_verified
        from zoo.hub import hf

        revision = self.read_at.get("commit", self.revision)
        source = hf.download(hf.api(), self.location, self.remote_path(entry, item), revision, str(self))
        copy_verified(source, destination, item["sha256"], item["size"], self.file_label(entry, item))

    def _index_at_head(self, client) -> tuple[str, dict[str, Any]]:
        from zoo.hub import hf

        commit = hf.head_commit(client, self.location, self.revision, str(self))
        path = hf.index_file_at(client, self.location, commit, str(self))
        if path is None:
            return commit, empty_index()
        return commit, parse_index(read_index_file(path, f"{self}/{INDEX_FILE}"), f"{self}/{INDEX_FILE}")

    def publish(self, describe: Describe, log: Callable[[str], None]) -> dict[str, Any]:
        from zoo.hub import hf

        client = hf.authenticated_api(f"pushing to {self}")
        hf.create_repo(client, self.location, str(self))
        parent, index = self._index_at_head(client)
        entry, contents = describe(index)
        commit = lambda index, parent: hf.commit_entry(
            client, self.location, self.revision, entry, contents, index, parent, str(self)
        )
        if commit(index, parent):
            return entry
        label = f"{entry['name']}@{entry['version']}"
        log(f"{self} changed while {label} was being pushed (another push landed); reading its index again")
        parent, index = self._index_at_head(client)
        if entry["version"] in index["adapters"].get(entry["name"], {}).get("versions", {}):
            raise HubError(
                f"{label} was published on {self} by another push meanwhile; nothing was published: push again "
                f"(without --version, the next free version is chosen)"
            )
        if commit(index, parent):
            return entry
        raise HubError(f"{self} changed again while {label} was being pushed; nothing was published: push again")


def parse_hub(url: str | os.PathLike) -> Hub:
    text = str(url)
    if text.startswith("hf://"):
        repo, _, revision = text[len("hf://") :].partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise HubError(f"hub {text!r}: write a Hugging Face Hub repository as hf://org/repo[@revision]")
        return HfHub(text, repo, revision or None)
    if text.startswith(("http://", "https://")):
        return HttpHub(text.rstrip("/"), text.rstrip("/"))
    text = text.removeprefix("file://")
    path = Path(text).expanduser().resolve()
    return FolderHub(str(path), str(path))


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
