"""Reading the files protein datasets come in (zip archives, CSV, FASTA), with errors that
name the file, and the line or record, that is wrong."""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

from zoo.catalog.datasets import DataError
from zoo.errors import MissingDataError


def zip_members(archive: Path) -> dict[str, str]:
    """Base name -> member name of the files in ``archive`` (macOS metadata skipped)."""
    try:
        with zipfile.ZipFile(archive) as handle:
            names = handle.namelist()
    except FileNotFoundError:
        raise MissingDataError(f"{archive} does not exist") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(
            f"{archive} is not a readable zip archive ({error}); the file is corrupt or incomplete, delete it and fetch it again"
        ) from None
    return {
        n.rsplit("/", 1)[-1]: n
        for n in names
        if not n.endswith("/") and "__MACOSX" not in n and not n.rsplit("/", 1)[-1].startswith(".")
    }


def read_zip_text(archive: Path, member: str) -> str:
    try:
        with zipfile.ZipFile(archive) as handle:
            return handle.read(member).decode("utf-8")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"{archive}: member {member} cannot be read ({type(error).__name__}: {error}); the archive is corrupt"
        ) from None


def read_text(path: Path, layout: str) -> str:
    if not path.is_file():
        raise MissingDataError(f"{path} does not exist; expected {layout}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path} cannot be read as UTF-8 text ({error})") from None


def read_csv_rows(text: str, where: str, required: Iterable[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV with a header; DataError naming ``where`` if malformed."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(
                f"{where}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'no header'}"
            )
        rows = []
        for row in reader:
            if None in row or any(value is None for value in row.values()):
                raise DataError(
                    f"{where} line {reader.line_num}: expected {len(columns)} fields ({', '.join(columns)})"
                )
            rows.append((reader.line_num, row))
    except csv.Error as error:
        raise DataError(f"{where} line {reader.line_num}: not valid CSV ({error})") from None
    return rows


def read_fasta(text: str, where: str) -> list[tuple[str, str]]:
    """(header without '>', sequence) records; sequence lines are joined, whitespace dropped."""
    records: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            records.append((line[1:].strip(), []))
        elif not records:
            raise DataError(f"{where} line {number}: not FASTA (text before the first '>' header)")
        else:
            records[-1][1].append("".join(line.split()))
    return [(header, "".join(parts)) for header, parts in records]


def header_attributes(header: str) -> tuple[str, dict[str, str]]:
    """``'Seq1 SET=train VALIDATION=False'`` -> ``('Seq1', {'set': 'train', 'validation': 'False'})``."""
    identifier, *fields = header.split()
    attributes = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if sep:
            attributes[key.lower()] = value
    return identifier, attributes
