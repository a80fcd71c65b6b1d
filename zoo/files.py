"""Writing files and folders so that a reader sees the whole new one or the old one, never a part.

Everything zoo writes that someone else reads (run directories, adapters, checkpoints, downloads,
fixtures, hub files) goes through :func:`atomic_file` or :func:`atomic_directory`: the content is
written beside the target under a temporary name, flushed to disk, and renamed into place with
``os.replace``, which is atomic on POSIX and Windows. What is staged across processes (a pulled
adapter's folder, a resumed download's ``.part``) is put in place by :func:`swap_directory` and
:func:`move_into_place`, the same renames. A crash or a Ctrl-C leaves the old target (or
none) and no temporary file.

The temporary names are made here rather than by :mod:`tempfile`, whose files are 0600 and folders 0700
whatever the umask: renamed into place they would keep those modes, and no one else could read a run
directory in a shared results folder. Made here, they get the modes the umask gives any new file (0644
and 0755 under umask 022, 0600 and 0700 under 077).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
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


ATTEMPTS = 100
"""Random names tried before giving up (each one taken means another writer is at the same spot)."""


def make_temporary_file(directory: str | os.PathLike, prefix: str, suffix: str = "") -> tuple[int, str]:
    """``tempfile.mkstemp``, but the new file has the umask's mode: an open descriptor and the path."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(ATTEMPTS):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path  # the kernel applies the umask to 0o666
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {directory} after {ATTEMPTS} tries")


def make_temporary_directory(directory: str | os.PathLike, prefix: str) -> Path:
    """``tempfile.mkdtemp``, but the new folder has the umask's mode."""
    for _ in range(ATTEMPTS):
        path = Path(directory) / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)  # the kernel applies the umask to 0o777
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary folder name {prefix}* in {directory} after {ATTEMPTS} tries")


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike, mode: str = "wb", keep_previous: Path | None = None, permissions: int | None = None
) -> Iterator[IO]:
    """A handle to write ``path`` through; the file appears, complete, when the block ends without error.

    With ``keep_previous``, the file it replaces is moved there first, but only once the new one is
    on disk, so that one good copy exists at every moment. ``permissions``: the file's mode whatever
    the umask (a hub folder is meant to be served, so its files are 0644); default: the umask's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = make_temporary_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if permissions is not None:
            os.chmod(temporary, permissions)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, permissions: int | None = None) -> None:
    with atomic_file(path, "w", permissions=permissions) as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, permissions: int | None = None) -> None:
    with atomic_file(path, "wb", permissions=permissions) as handle:
        handle.write(data)


def move_into_place(complete: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename ``complete``, a finished file written beside ``path`` under another name (a resumed download's
    ``.part``, kept across processes, so not an :func:`atomic_file`), to ``path``, durably."""
    with open(complete, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(complete, path)
    fsync_directory(Path(path).parent)


def swap_directory(staging: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the complete folder ``staging`` to ``path``, replacing what is there in one step for a reader.

    A folder cannot be renamed over a non-empty one: the old one is moved aside first, put back if
    the swap fails, and removed after it. ``staging`` must be beside ``path`` (same file system).
    """
    staging, path = Path(staging), Path(path)
    if not path.exists():
        os.replace(staging, path)
    else:
        backup = path.with_name(f".{path.name}.previous-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(path, backup)
        try:
            os.replace(staging, path)
        except BaseException:
            os.replace(backup, path)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A staging folder to fill; it becomes ``path`` when the block ends without error.

    An existing ``path`` is replaced (``replace=True``, see :func:`swap_directory`) or left as it is
    when another process made it meanwhile (``replace=False``: first writer wins, as for a cache).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_directory(path.parent, prefix=f".{path.name}.")
    try:
        yield staging
        if replace:
            swap_directory(staging, path)
        elif not path.exists():
            try:
                os.replace(staging, path)
            except OSError:
                if not path.exists():  # another process won the race when not replacing
                    raise
            fsync_directory(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
