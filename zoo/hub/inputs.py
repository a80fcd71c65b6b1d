"""What ``zoo predict`` reads: each argument is a file (or folder) or an input typed on the command line.

An argument is read as a file when it looks like one: it ends in a known file suffix (``.txt``,
``.png``, ``.wav``, ``.dat``, or one a domain's reader declares) or it names a path (a path
separator and no spaces, or a path that exists). Such a file must exist and be of a kind the
adapter's domain reads; otherwise the error names the argument and what the adapter takes, rather
than predicting on the file's name as if it were a sentence. ``-`` reads standard input, one input
a line (never read as file names). Any source that yields no input (an empty or blank file, an
empty folder, empty standard input) is an error naming it.

Each domain registers an :class:`InputReader` (``zoo_domains/<domain>/inputs.py``) saying which
files it reads and how, and writes an example of them; the core never imports a domain, it looks
the reader up by name.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TextIO

from zoo.catalog.registry import Registry
from zoo.errors import DataError

Read = list[tuple[Any, str]]
"""Inputs, each with the name it is shown by (the text itself, a file, ``file:record``)."""

_IMAGE = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_AUDIO = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aiff")
_VIDEO = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_BINARY = (".dat", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".safetensors", ".onnx", ".h5", ".parquet")
# What a file of each common suffix is, to say why it does not fit an adapter ("img.png is an image").
# Files of one field (FASTA, say) are named by the reader of the domain that reads them (InputReader.kinds).
FILE_KINDS: dict[str, str] = {
    **{suffix: "a text file" for suffix in (".txt", ".text")},
    ".csv": "a CSV table",
    ".tsv": "a TSV table",
    ".json": "a JSON file",
    ".jsonl": "a JSON-lines file",
    **{suffix: "an image" for suffix in _IMAGE},
    **{suffix: "an audio file" for suffix in _AUDIO},
    **{suffix: "a video" for suffix in _VIDEO},
    **{suffix: "a binary data file" for suffix in _BINARY},
    **{suffix: "a NumPy array file" for suffix in (".npy", ".npz")},
    **{suffix: "an archive" for suffix in (".zip", ".gz", ".tgz", ".tar", ".bz2", ".xz")},
    ".pdf": "a PDF document",
}


@dataclass(frozen=True)
class InputExample:
    """Inputs of a domain written to files, for tests and documentation: what to pass to ``zoo predict``
    and what the reader must make of it."""

    arguments: tuple[str, ...]
    """``zoo predict`` arguments: file and folder paths, typed inputs."""
    inputs: tuple[Any, ...]
    """The inputs those arguments hold, in order, built from what was written (not read back), as the
    domain's backbones collate them: texts, arrays, tensors, (waveform, rate) pairs."""


@dataclass(frozen=True)
class InputReader:
    """How one domain's adapters read their inputs."""

    domain: str
    takes: str
    """What the adapters take, in words: ``"text or .txt/.csv/.tsv/.jsonl files"``."""
    suffixes: tuple[str, ...]
    """The file suffixes it reads (lower case, with the dot); the files of a folder are those."""
    read_file: Callable[[Path], Read]
    """Every input of one file; a DataError naming the file when it cannot be read."""
    write_example: Callable[[Path], InputExample]
    """Writes example inputs into an existing empty folder; says what to pass and what they hold."""
    read_argument: Callable[[str], tuple[Any, str]] | None = None
    """An input typed on the command line (a text, a sequence); None when only files are read."""
    read_lines: Callable[[list[str]], Read] | None = None
    """The inputs in the lines of standard input (``-``); None when standard input is not read."""
    reads_folders: bool = False
    """Whether a folder means every file in it with one of ``suffixes``."""
    read_folder: Callable[[Path], Read] | None = None
    """Every input of a folder, when a folder is read otherwise (a folder of video frames is one clip)."""
    kinds: Mapping[str, str] = field(default_factory=dict)
    """What a file of a suffix this domain knows is, in errors (``{".fasta": "a FASTA file"}``)."""
    for_adapter: Callable[[str | None, Mapping[str, Any]], InputReader] | None = None
    """The reader for one adapter, from its task kind and data options (frames sampled per clip, say),
    so inputs are read as its training data was; None when every adapter reads alike."""


INPUT_READERS: Registry[InputReader] = Registry("input reader")


def register_input_reader(reader: InputReader) -> InputReader:
    return INPUT_READERS.add(reader.domain, reader)


def describe_readers() -> list[str]:
    """``"<domain>: <what its adapters take>"`` for every registered reader."""
    return [f"{domain}: {INPUT_READERS.get(domain).takes}" for domain in INPUT_READERS.names()]


def file_kind(path: str | os.PathLike) -> str | None:
    """What a file of this suffix is (``"an image"``, ``"a protein input file"``), None for an unknown suffix."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return None
    if suffix in FILE_KINDS:
        return FILE_KINDS[suffix]
    readers = [INPUT_READERS.get(domain) for domain in INPUT_READERS.names()]
    named = next((r.kinds[suffix] for r in readers if suffix in r.kinds), None)
    return named or next((f"a {r.domain} input file" for r in readers if suffix in r.suffixes), None)


def looks_like_file(argument: str) -> bool:
    """A known file suffix, or a path: a separator without spaces (``data/x``), or one that exists."""
    if file_kind(argument) is not None:
        return True
    separators = [s for s in ("/", os.sep, os.altsep) if s]
    if not any(s in argument for s in separators):
        return False
    return not any(c.isspace() for c in argument) or Path(argument).expanduser().exists()


def _misfit(model: str, reader: InputReader, argument: str, what: str) -> DataError:
    return DataError(f"{model} takes {reader.takes}; {argument} is {what}")


def _read_path(model: str, reader: InputReader, argument: str) -> Read:
    path = Path(argument).expanduser()
    kind = file_kind(path)
    # a file of a known kind this model does not take, whether or not it exists: no such file could be read
    if kind is not None and path.suffix.lower() not in reader.suffixes and not path.is_dir():
        raise _misfit(model, reader, argument, kind)
    if not path.exists():
        hint = (
            f"; to predict on the words themselves, pipe them in: echo {shlex.quote(argument)} | zoo predict {model} -"
            if reader.read_lines is not None
            else ""
        )
        raise DataError(
            f"{argument}: no such file or folder (an argument with a file suffix or a path is read as one){hint}"
        )
    if path.is_dir() and reader.read_folder is not None:
        found = reader.read_folder(path)
    elif path.is_dir():
        if not reader.reads_folders:
            raise _misfit(model, reader, argument, "a folder")
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in reader.suffixes
        )
        if not files:
            raise DataError(f"{argument}: a folder with no {'/'.join(reader.suffixes)} files in it")
        found = [item for file in files for item in reader.read_file(file)]
    else:
        found = reader.read_file(path)
    if not found:
        raise DataError(f"{argument}: no inputs in it (the file is empty or holds only blank lines)")
    return found


def reader_for(domain: str, task_kind: str | None = None, data_options: Mapping[str, Any] | None = None) -> InputReader:
    """The registered reader of ``domain``, fitted to an adapter's task kind and data options when it asks."""
    if domain not in INPUT_READERS:
        raise DataError(
            f"zoo predict reads inputs for {', '.join(INPUT_READERS.names())}; {domain} inputs are not supported from "
            f"the command line (use zoo.hub.load(...).predict([...]) with the dataset's items)"
        )
    reader = INPUT_READERS.get(domain)
    return reader.for_adapter(task_kind, dict(data_options or {})) if reader.for_adapter is not None else reader


def read_inputs(
    domain: str,
    arguments: Iterable[str],
    model: str = "this adapter",
    stdin: TextIO | None = None,
    task_kind: str | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> tuple[list[Any], list[str]]:
    """(inputs for the backbone's collate, a display name for each) from ``zoo predict``'s arguments.

    ``model`` names the adapter in errors; ``stdin`` is read for ``-`` (default: ``sys.stdin``);
    ``task_kind`` and ``data_options`` (the adapter's ``data.options``) fit the reader to the adapter."""
    arguments = list(arguments)
    reader = reader_for(domain, task_kind, data_options)
    if not arguments:
        raise DataError(f"no inputs given: {model} takes {reader.takes}")
    found: Read = []
    for argument in arguments:
        if argument == "-":
            if reader.read_lines is None:
                raise DataError(f"{model} takes {reader.takes}; standard input ('-') is not read for {domain}")
            lines = (stdin or sys.stdin).read().splitlines()
            read = reader.read_lines(lines)
            if not read:
                raise DataError("standard input ('-') held no inputs (it was empty or only blank lines)")
            found += read
        elif looks_like_file(argument):
            found += _read_path(model, reader, argument)
        elif reader.read_argument is None:
            raise _misfit(model, reader, repr(argument), "neither a file nor a folder")
        else:
            found.append(reader.read_argument(argument))
    return [item for item, _ in found], [name for _, name in found]
