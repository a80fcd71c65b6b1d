"""What ``zoo predict`` reads for text adapters: texts typed as arguments, or files of texts.

- ``.txt``: one text a non-empty line;
- ``.tsv`` (unquoted, the GLUE layout) and ``.csv`` (quoted): the column named like a text
  column (``text``, ``sentence``, ...) when the first row is such a header, else the first column;
- ``.jsonl``: one JSON object a line, its text field (or a JSON string a line);
- ``.json``: a list of texts or of such objects;
- ``-``: one text a non-empty line of standard input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo.errors import DataError
from zoo.hub.inputs import InputExample, InputReader, Read, register_input_reader
from zoo_domains.text.data import read_csv, read_lines

TEXT_COLUMNS = ("text", "sentence", "sentence1", "source", "review", "content", "description")
"""Header names taken as the column of texts, in this order."""


def _texts(texts: list[str]) -> Read:
    return [(text, text) for text in texts]


def _column_of_texts(rows: list[list[str]], path: Path) -> list[str]:
    """The text column when the first row is a header naming one, else the first column."""
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in TEXT_COLUMNS if name in header), None)
    if column is None:
        return [row[0].strip() for row in rows if row[0].strip()]
    for number, row in enumerate(rows[1:], 2):
        if len(row) <= column:
            raise DataError(
                f"{path}, row {number}: {len(row)} field(s), but the header puts the text in field {column + 1}"
            )
    return [row[column].strip() for row in rows[1:] if row[column].strip()]


def _text_of(record: Any, where: str) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for name in TEXT_COLUMNS:
            if isinstance(record.get(name), str):
                return record[name]
        raise DataError(f"{where}: no text field; expected one of {', '.join(TEXT_COLUMNS)}, found {', '.join(record)}")
    raise DataError(f"{where}: expected a text or an object with a text field, found {type(record).__name__}")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None


def read_text_file(path: Path) -> Read:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        rows = [line.split("\t") for _, line in read_lines(path) if line.strip()]
        return _texts(_column_of_texts(rows, path))
    if suffix == ".csv":
        return _texts(_column_of_texts([row for _, row in read_csv(path)], path))
    if suffix == ".jsonl":
        texts = []
        for line_number, line in read_lines(path):
            if line.strip():
                texts.append(_text_of(_json(line, f"{path}, line {line_number}"), f"{path}, line {line_number}"))
        return _texts(texts)
    if suffix == ".json":
        records = _json("\n".join(line for _, line in read_lines(path)) or "[]", str(path))
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of texts, found {type(records).__name__}")
        return _texts([_text_of(record, f"{path}, item {n}") for n, record in enumerate(records)])
    return read_text_lines([line for _, line in read_lines(path)])


def read_text_lines(lines: list[str]) -> Read:
    return _texts([line.strip() for line in lines if line.strip()])


def read_text_argument(argument: str) -> tuple[str, str]:
    if not argument.strip():
        raise DataError("an empty text was given; pass the text to classify (or a file of texts)")
    return argument, argument


def write_example(folder: Path) -> InputExample:
    """A typed text, a .txt file of two and a .csv with a header naming its text column."""
    texts = ["a gripping, beautifully acted film", "dull and far too long", "the music is the best thing about it"]
    (folder / "reviews.txt").write_text(f"{texts[1]}\n\n{texts[2]}\n", encoding="utf-8")
    (folder / "reviews.csv").write_text(f'id,text\n7,"{texts[0]}"\n', encoding="utf-8")
    arguments = (texts[0], str(folder / "reviews.txt"), str(folder / "reviews.csv"))
    return InputExample(arguments, (texts[0], texts[1], texts[2], texts[0]))


register_input_reader(
    InputReader(
        domain="text",
        takes="text or .txt/.csv/.tsv/.jsonl/.json files of texts",
        suffixes=(".txt", ".text", ".csv", ".tsv", ".jsonl", ".json"),
        read_file=read_text_file,
        write_example=write_example,
        read_argument=read_text_argument,
        read_lines=read_text_lines,
    )
)
