"""What ``zoo predict`` reads for video-text adapters: clips, and for retrieval the text queries to match.

A clip is a ``.npy`` array (frames, height, width, 3), a folder of frame images (``000.png``,
``001.png``, ...) or a video file (``.mp4``/``.avi``/..., decoded with PyAV), read by
:func:`zoo_domains.video_text.clips.read_clip` with the adapter's ``data.options.num_frames``, so
each clip is sampled as its training clips were. A folder holding clips rather than frames means
each clip in it. A retrieval adapter also takes text queries, typed or one a line of ``-``: each
query is matched against the clips given and each clip against the queries. A classification
adapter (MSR-VTT categories) takes clips only.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Mapping

from zoo.errors import DataError
from zoo.hub.inputs import InputExample, InputReader, Read, register_input_reader
from zoo_domains.video_text.clips import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_clip

DEFAULT_FRAMES = 8
"""Frames sampled per clip when the adapter does not say (the msrvtt datasets' default)."""
CLIP_SUFFIXES = (".npy", *VIDEO_SUFFIXES)
QUERIES_FOR = ("retrieval",)
"""Task kinds whose adapters match text queries against clips."""


def read_clip_file(path: Path, num_frames: int = DEFAULT_FRAMES) -> Read:
    return [(read_clip(path, num_frames), str(path))]


def read_clip_folder(path: Path, num_frames: int = DEFAULT_FRAMES) -> Read:
    """A folder of frame images is one clip; a folder of clips (files or frame folders) is each of them."""
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return [(read_clip(path, num_frames), str(path))]
    clips = sorted(p for p in entries if p.is_dir() or p.suffix.lower() in CLIP_SUFFIXES)
    if not clips:
        raise DataError(
            f"{path}: a folder with neither frame images ({'/'.join(IMAGE_SUFFIXES)}) nor clips "
            f"({'/'.join(CLIP_SUFFIXES)} files or folders of frames) in it"
        )
    return [(read_clip(clip, num_frames), str(clip)) for clip in clips]


def read_query(argument: str) -> tuple[str, str]:
    if not argument.strip():
        raise DataError("an empty query was given; pass the text to match against the clips")
    return argument, argument


def read_query_lines(lines: list[str]) -> Read:
    return [(line.strip(), line.strip()) for line in lines if line.strip()]


def write_example(folder: Path) -> InputExample:
    """A .npy clip, a folder of PNG frames and a query, each clip of DEFAULT_FRAMES frames (all of them read)."""
    import numpy as np
    import torch
    from PIL import Image

    from zoo_domains.video_text.data import synthetic_clip

    first, query, _ = synthetic_clip(0, frames=DEFAULT_FRAMES)
    second, _, _ = synthetic_clip(1, frames=DEFAULT_FRAMES)
    np.save(folder / "red.npy", first)
    (folder / "green").mkdir()
    for index, frame in enumerate(second):
        Image.fromarray(frame).save(folder / "green" / f"{index:03d}.png")
    as_written = [torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255 for clip in (first, second)]
    return InputExample((str(folder / "red.npy"), str(folder / "green"), query), (*as_written, query))


def reader(num_frames: int = DEFAULT_FRAMES, queries: bool = True) -> InputReader:
    takes = f"clips (.npy frame arrays, folders of frames, {'/'.join(VIDEO_SUFFIXES)} videos)"
    return InputReader(
        domain="video_text",
        takes=f"{takes} and text queries to match against them" if queries else takes,
        suffixes=CLIP_SUFFIXES,
        read_file=partial(read_clip_file, num_frames=num_frames),
        write_example=write_example,
        read_argument=read_query if queries else None,
        read_lines=read_query_lines if queries else None,
        read_folder=partial(read_clip_folder, num_frames=num_frames),
        for_adapter=for_adapter,
    )


def for_adapter(task_kind: str | None, data_options: Mapping[str, Any]) -> InputReader:
    num_frames = data_options.get("num_frames", DEFAULT_FRAMES)
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise DataError(f"the adapter's data.options.num_frames is {num_frames!r}; expected a whole number >= 1")
    fitted = reader(num_frames, queries=task_kind is None or task_kind in QUERIES_FOR)
    return replace(fitted, for_adapter=None)


register_input_reader(reader())
