"""Reading prediction inputs for a domain from the command line: what ``zoo predict`` takes.

- text: each argument is a text, or a ``.txt`` file whose non-empty lines are texts
  (``-`` reads lines from standard input);
- vision: image files (PNG, JPEG, ... anything PIL opens), or folders of them;
- protein: FASTA files (every record) or raw amino-acid sequences;
- speech: WAV/FLAC files (mono, at the file's rate), or folders of them.

Each input comes back with a display name (the text itself, the file, ``file:record``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from zoo.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def _files(arguments: list[str], suffixes: tuple[str, ...], what: str) -> list[Path]:
    found = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{argument}: no such {what} file or folder")
    if not found:
        raise DataError(f"no {what} files among {', '.join(arguments)} (looked for {', '.join(suffixes)})")
    return found


def read_text(arguments: list[str]) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    for argument in arguments:
        if argument == "-":
            texts += [line.rstrip("\n") for line in sys.stdin if line.strip()]
            continue
        path = Path(argument)
        if path.suffix.lower() in (".txt", ".text") and path.is_file():
            try:
                texts += [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: not UTF-8 text ({error.reason})") from None
        else:
            texts.append(argument)
    return texts, list(texts)


def read_images(arguments: list[str]) -> tuple[list[Any], list[str]]:
    from PIL import Image, UnidentifiedImageError

    images, names = [], []
    for path in _files(arguments, IMAGE_SUFFIXES, "image"):
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"{path}: not an image PIL can read ({error})") from None
        names.append(str(path))
    return images, names


def read_fasta_or_sequences(arguments: list[str]) -> tuple[list[str], list[str]]:
    sequences, names = [], []
    for argument in arguments:
        path = Path(argument)
        if not path.is_file():
            sequence = argument.strip().upper()
            if not sequence.isalpha():
                raise DataError(f"{argument!r} is neither a FASTA file nor an amino-acid sequence")
            sequences.append(sequence)
            names.append(sequence if len(sequence) <= 30 else sequence[:27] + "...")
            continue
        header, parts = None, []
        for line in path.read_text().splitlines() + [">"]:
            if line.startswith(">"):
                if header is not None:
                    if not parts:
                        raise DataError(f"{path}: record {header!r} has no sequence")
                    sequences.append("".join(parts).upper())
                    names.append(f"{path}:{header}")
                header, parts = line[1:].strip().split(" ")[0] or f"record{len(names) + 1}", []
            elif line.strip():
                if header is None:
                    raise DataError(f"{path}: not FASTA (sequence before the first '>' header)")
                parts.append(line.strip())
    return sequences, names


def read_audio(arguments: list[str]) -> tuple[list[Any], list[str]]:
    import soundfile
    import torch

    clips, names = [], []
    for path in _files(arguments, AUDIO_SUFFIXES, "audio"):
        try:
            data, _rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (soundfile.SoundFileError, RuntimeError, OSError) as error:
            raise DataError(f"{path}: not an audio file soundfile can read ({error})") from None
        clips.append(torch.from_numpy(data.mean(axis=1)))
        names.append(str(path))
    return clips, names


READERS = {"text": read_text, "vision": read_images, "protein": read_fasta_or_sequences, "speech": read_audio}


def read_inputs(domain: str, arguments: list[str]) -> tuple[list[Any], list[str]]:
    """(inputs for the backbone's collate, a display name for each)."""
    if domain not in READERS:
        raise DataError(
            f"zoo predict reads inputs for {', '.join(READERS)}; {domain} inputs are not supported from "
            f"the command line (use zoo.hub.load(...).predict([...]) with the dataset's items)"
        )
    if not arguments:
        raise DataError("no inputs given")
    return READERS[domain](arguments)
