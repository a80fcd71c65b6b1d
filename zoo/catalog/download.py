"""Fetching files by URL with checksum verification, and reading local copies.

Downloads go to a temporary file next to the destination and are renamed into place
only after their sha256 matches, so an interrupted or corrupt download never leaves a
file that looks complete. A local copy the user supplied is trusted with a warning when
its checksum differs (e.g. a subset of the official file); a download that differs is an
error.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import requests

from zoo.catalog.bounded_http import BoundedGet
from zoo.errors import ChecksumWarning, DownloadError
from zoo.files import atomic_file, move_into_place


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


class RepeatedChecksumWarning(ChecksumWarning):
    """A local copy this process has already warned about. Still raised, so that code noting which files
    differ (``zoo.catalog.datasets.load_noting_checksums``) sees it on every load, but not shown: a
    differing file is one line per process, not one per split that reads it."""


# Appended, so that a user's own filters (-W, warnings.simplefilter) come first and win.
warnings.filterwarnings("ignore", category=RepeatedChecksumWarning, append=True)
# Local copies warned about in this process, as (file, digest). Python's once-per-location registry cannot
# do this: any warnings.catch_warnings (which libraries enter all the time) clears it.
_warned_copies: set[tuple[str, str]] = set()


def check_local_copy(path: Path, sha256: str | None, what: str, md5: str | None = None) -> Path:
    """Accept a user-supplied file, warning (once per file and process) if it is not the canonical one."""
    expected, algorithm = (sha256, "sha256") if sha256 else (md5, "md5")
    if expected:
        actual = sha256_of(path, algorithm=algorithm)
        seen = (str(Path(path).resolve()), actual)
        if actual != expected:
            category = RepeatedChecksumWarning if seen in _warned_copies else ChecksumWarning
            _warned_copies.add(seen)
            warnings.warn(
                category(
                    f"{what}: local file {path} has {algorithm} {actual[:12]}..., not the canonical {expected[:12]}...; "
                    f"using it as given (a subset or another version of the official file)",
                    path,
                ),
                stacklevel=3,
            )
    return path


def download(
    url: str, destination: Path, sha256: str | None, what: str, timeout: float = 30.0, md5: str | None = None
) -> Path:
    """Fetch ``url`` to ``destination`` (atomically), verifying ``sha256`` (or ``md5``) when given."""
    expected, algorithm = (sha256, "sha256") if sha256 else (md5, "md5")
    digest = hashlib.new(algorithm)
    try:
        with atomic_file(destination) as out, requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
                digest.update(chunk)
            if expected and digest.hexdigest() != expected:
                raise DownloadError(
                    f"{what}: the file downloaded from {url} has {algorithm} {digest.hexdigest()}, expected {expected}; "
                    f"it was not saved. Try again; if it persists the file upstream changed"
                )
    except requests.RequestException as error:
        raise DownloadError(
            f"{what}: could not download {url} ({type(error).__name__}: {error}). Without network access, "
            f"fetch the file elsewhere and put it at {destination}, or point the data root "
            f"(data.root=... or ZOO_DATA_DIR) at a folder that has it"
        ) from None
    return destination


HUB_PROBE_TIMEOUT_S = 3.0


def hf_hub_unavailable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub cannot be used now (HF_HUB_OFFLINE set, or its endpoint does not
    answer), or None when it answers.

    huggingface_hub retries an unreachable host for about a minute per file; one short probe lets
    an offline machine fail at once (or use its cache) instead. Every domain asks this one function.
    """
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if flag or bool(getattr(constants, "HF_HUB_OFFLINE", False)):
        return "the hub is offline (HF_HUB_OFFLINE is set)"
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        requests.head(endpoint, timeout=timeout, allow_redirects=False)
    except requests.RequestException as error:
        return f"{endpoint} is unreachable ({type(error).__name__})"
    return None


# -- verified, resumable fetches (the hub) ------------------------------------------------
def _integrity_error(what: str, message: str) -> Exception:
    from zoo.errors import IntegrityError

    return IntegrityError(f"{what}: {message}")


def _finish_part(part: Path, destination: Path, sha256: str, size: int, what: str, source: str) -> Path:
    actual_size = part.stat().st_size
    if actual_size != size:
        part.unlink(missing_ok=True)
        raise _integrity_error(what, f"{source} gave {actual_size} bytes, the index declares {size}; nothing was kept")
    actual = sha256_of(part)
    if actual != sha256:
        part.unlink(missing_ok=True)
        raise _integrity_error(
            what,
            f"{source} has sha256 {actual}, the index declares {sha256}; the partial file was removed and "
            f"nothing was kept. The file on the hub is corrupt or was replaced",
        )
    move_into_place(part, destination)
    return destination


def copy_verified(source: Path, destination: Path, sha256: str, size: int, what: str) -> Path:
    """Copy a local file to ``destination`` (atomically) if it has the declared size and sha256; nothing is
    written otherwise."""
    source = Path(source)
    if not source.is_file():
        raise DownloadError(f"{what}: {source} does not exist")
    if source.stat().st_size > size:
        raise _integrity_error(
            what, f"{source} is {source.stat().st_size} bytes, larger than the {size} declared; refused"
        )
    digest, copied = hashlib.sha256(), 0
    with open(source, "rb") as reader, atomic_file(destination) as writer:
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            digest.update(chunk)
            copied += len(chunk)
            writer.write(chunk)
        if copied != size:  # raised inside the block: the temporary file is removed, nothing is kept
            raise _integrity_error(what, f"{source} has {copied} bytes, the index declares {size}; nothing was kept")
        if digest.hexdigest() != sha256:
            raise _integrity_error(
                what,
                f"{source} has sha256 {digest.hexdigest()}, the index declares {sha256}; nothing was kept. "
                f"The file on the hub is corrupt or was replaced",
            )
    return destination


def download_resumable(
    url: str,
    destination: Path,
    sha256: str,
    size: int,
    what: str,
    *,
    timeout: float = 30.0,
    attempts: int = 3,
    deadline_s: float | None = None,
) -> Path:
    """Fetch ``url`` to ``destination``, resuming ``destination.part`` with an HTTP Range request.

    ``timeout`` bounds each read, ``deadline_s`` each request as a whole (default ``$ZOO_HTTP_DEADLINE_S``,
    see :mod:`zoo.catalog.bounded_http`): a server that trickles cannot keep it going for ever.

    The partial file is kept when the connection drops (the next call, in this process or another,
    continues from where it stopped); it is removed when the file turns out larger than ``size`` or
    its sha256 is not ``sha256``. ``destination`` appears, by rename, only once verified.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    last_error: BaseException | None = None
    for _ in range(max(1, attempts)):
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        if offset == size:
            break
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with BoundedGet(url, deadline_s=deadline_s, timeout=timeout, headers=headers) as request:
                response = request.response
                if offset and response.status_code == 200:  # the server ignored the range: start again
                    offset = 0
                elif (
                    offset
                    and response.status_code == 206
                    and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
                ):
                    part.unlink(missing_ok=True)  # a range other than the one asked for: start again
                    continue
                response.raise_for_status()
                with open(part, "ab" if offset else "wb") as out:
                    written = offset
                    for chunk in request.chunks(1 << 13):  # small: a dropped connection loses at most one chunk
                        written += len(chunk)
                        if written > size:
                            out.close()
                            part.unlink(missing_ok=True)
                            raise _integrity_error(
                                what, f"{url} sent more than the {size} bytes the index declares; refused, nothing kept"
                            )
                        out.write(chunk)
            last_error = None
            if part.stat().st_size == size:
                break
            last_error = ConnectionError(f"connection closed after {part.stat().st_size} of {size} bytes")
        except requests.HTTPError as error:
            raise DownloadError(f"{what}: {url}: {error}") from None
        except requests.RequestException as error:
            last_error = error
    if last_error is not None and (not part.exists() or part.stat().st_size < size):
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"{what}: could not download {url} ({type(last_error).__name__}: {last_error}); {have} of {size} bytes "
            f"are kept in {part} and the next pull resumes from there"
        )
    return _finish_part(part, destination, sha256, size, what, url)
