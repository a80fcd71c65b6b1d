"""Every error type zoo raises for bad input, in one place.

Each is raised with a message that names the problem and the fix; the CLI prints that
message as one line (no traceback). ``zoo.peft`` re-exports them.
"""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A recipe key, a method option or a command-line value is unknown or outside what is allowed."""


class UnknownNameError(KeyError):
    """A name that is not registered; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


class DataError(ValueError):
    """Data that is missing, corrupt or out of range; the message names the file."""


class MissingDataError(DataError):
    """Data files that are not where they are looked for; unlike a file that is there but wrong, this one
    gets the ways to get the data added to its message."""


class DownloadError(RuntimeError):
    """A file could not be fetched or did not match its checksum."""


class ChecksumWarning(UserWarning):
    """A local copy differs from the canonical file; ``path`` is that copy."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights could not be loaded (offline, missing file, wrong format)."""


class AdapterFileError(ValueError):
    """An adapter directory is missing, corrupt, or does not fit the model."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model and settings."""


class ResultsStoreError(DataError):
    """The results store cannot be read or written; ``zoo results rebuild`` remakes it from the run directories."""

    reason: str
    """Set on a store that cannot be read: the underlying error, which ``rebuild`` reports."""


class HubError(ValueError):
    """A hub, its index or one of its entries is missing, malformed or unsafe (the message names the entry)."""


class IntegrityError(DownloadError):
    """A file from a hub is larger than declared or its sha256 differs; nothing was kept."""


class FingerprintMismatch(AdapterFileError):
    """An adapter was trained on other backbone weights than the ones at hand (``--force`` loads it anyway)."""
