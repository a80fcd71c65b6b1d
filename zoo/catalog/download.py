"""Fetching files by URL with checksum verification, and reading local copies.

Downloads go to a temporary file next to the destination and are renamed into place
only after their sha256 matches, so an interrupted or corrupt download never leaves a
file that looks complete. A local copy the user supplied is trusted with a warning when
its checksum differs (e.g. a subset of the official file); a download that differs is an
error.
"""

from __future__ import annotations

from zoo.errors import ChecksumWarning, DownloadError
from zoo.files import atomic_file

import hashlib
import os
import warnings
from pathlib import Path

import requests


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_local_copy(path: Path, sha256: str | None, what: str, md5: str | None = None) -> Path:
    """Accept a user-supplied file, warning if it is not the canonical one."""
    expected, algorithm = (sha256, "sha256") if sha256 else (md5, "md5")
    if expected:
        actual = sha256_of(path, algorithm=algorithm)
        if actual != expected:
            warnings.warn(
                ChecksumWarning(
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
