"""Writing files and folders so that a reader sees the whole new one or the old one, never a part.

Everything zoo writes that someone else reads (run directories, adapters, checkpoints, downloads,
fixtures, hub files) goes through :func:`atomic_file` or :func:`atomic_directory`: the content is
written beside the target under a temporary name, flushed to disk, and renamed into place with
``os.replace``, which is atomic on POSIX and Windows. A crash or a Ctrl-C leaves the old target (or
none) and no temporary file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable; not possible (nor needed) on every platform."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", keep_previous: Path | None = None) -> Iterator[IO]:
    """A handle to write ``path`` through; the file appears, complete, when the block ends without error.

    With ``keep_previous``, the file it replaces is moved there first, but only once the new one is
    on disk, so that one good copy exists at every moment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A staging folder to fill; it becomes ``path`` when the block ends without error.

    An existing ``path`` is replaced (``replace=True``) or left as it is when another process made it
    meanwhile (``replace=False``: first writer wins, as for a cache).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    backup = path.with_name(f".{path.name}.previous-{os.getpid()}")
    try:
        yield staging
        if not path.exists():
            try:
                os.replace(staging, path)
            except OSError:
                if replace or not path.exists():  # another process won the race when not replacing
                    raise
        elif replace:
            # A folder cannot be renamed over a non-empty one: move the old one aside, then swap.
            os.replace(path, backup)
            try:
                os.replace(staging, path)
            except BaseException:
                os.replace(backup, path)
                raise
        fsync_directory(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)
