"""The inputs of a ``zoo serve`` request, read by the same domain readers as ``zoo predict``'s arguments.

A request's ``inputs`` is a JSON list; each item is

- a string: an input typed on the command line, read by the domain's ``read_argument`` (a text, an
  amino-acid sequence, a video-text query). Never a path: the server opens no file a client names,
  so ``"reviews.txt"`` is the text "reviews.txt", where ``zoo predict`` would read the file;
- ``{"name": "cat.png", "base64": "<the file's bytes>"}``: a file's contents, read by the domain's
  reader for files of that suffix (images, audio, FASTA, ``.npy`` clips, text files), as ``zoo
  predict`` reads that file; the inputs it holds are shown by ``name`` (``name:record`` for FASTA).

An item the adapter's domain does not read (an image for a text adapter, a typed string for a
vision adapter) is a DataError naming the item and what the adapter takes.
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from pathlib import Path
from typing import Any

from zoo.errors import DataError
from zoo.hub.inputs import file_kind, reader_for

FILE_FIELDS = {"name", "base64"}
MAX_SHOWN_NAME = 200


def _file_item(item: dict[str, Any], number: int, model: str, reader, folder: Path) -> list[tuple[Any, str]]:
    name = item["name"]
    if not isinstance(name, str) or not name.strip() or not isinstance(item["base64"], str):
        raise DataError(f'input {number}: a file is {{"name": "cat.png", "base64": "..."}}, both strings')
    shown = name[:MAX_SHOWN_NAME]
    suffix = Path(name).suffix.lower()
    if suffix not in reader.suffixes:
        kind = file_kind(name) or "a file of a kind no reader knows"
        raise DataError(f"input {number}: {model} takes {reader.takes}; {shown} is {kind}")
    try:
        data = base64.b64decode(item["base64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise DataError(f"input {number}: {shown}: the base64 field is not base64 ({error})") from None
    # the reader takes a path: the bytes go to a file of the server's own naming, with the client's suffix
    path = folder / f"input{number}{re.sub(r'[^a-z0-9.]', '', suffix)}"
    path.write_bytes(data)
    try:
        found = reader.read_file(path)
    except DataError as error:
        raise DataError(f"input {number}: {str(error).replace(str(path), shown)}") from None
    if not found:
        raise DataError(f"input {number}: {shown} holds no inputs (it is empty or only blank lines)")
    return [
        (value, shown + label[len(str(path)) :] if label.startswith(str(path)) else label) for value, label in found
    ]


def read_request_inputs(
    domain: str, items: list[Any], model: str, task_kind: str | None = None, data_options: Any = None
) -> tuple[list[Any], list[str]]:
    """(inputs for the backbone's collate, the name each is shown by) from a request's ``inputs``."""
    reader = reader_for(domain, task_kind, data_options)
    found: list[tuple[Any, str]] = []
    with tempfile.TemporaryDirectory(prefix="zoo-serve-") as folder:
        for number, item in enumerate(items):
            if isinstance(item, str):
                if reader.read_argument is None:
                    raise DataError(
                        f"input {number}: {model} takes {reader.takes}, not typed strings; send a file as "
                        f'{{"name": "<file name>", "base64": "<its bytes>"}}'
                    )
                try:
                    found.append(reader.read_argument(item))
                except DataError as error:
                    raise DataError(f"input {number}: {error}") from None
            elif isinstance(item, dict) and set(item) == FILE_FIELDS:
                found += _file_item(item, number, model, reader, Path(folder))
            else:
                raise DataError(
                    f'input {number}: expected a string or a file as {{"name": ..., "base64": ...}}, '
                    f"got {type(item).__name__}{' with keys ' + ', '.join(sorted(item)) if isinstance(item, dict) else ''}"
                )
    return [value for value, _ in found], [name for _, name in found]
