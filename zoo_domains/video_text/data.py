"""MSR-VTT (Xu et al. 2016, "MSR-VTT: A Large Video Description Dataset for Bridging Video
and Language"): 10,000 web clips, 20 captions each, 20 categories.

Two datasets read the same folder ``<data root>/msrvtt``:

- ``msrvtt``: text-video retrieval; items ``((frames, caption), video_index)``.
- ``msrvtt_category``: video classification into the 20 MSR-VTT categories; items
  ``(frames, category)``.

``frames`` is a float tensor (F, 3, H, W) in [0, 1] of ``num_frames`` frames sampled
uniformly (the middle frame of F equal segments), what the CLIP video backbones collate.

Layout read (either one):

1. zoo's layout, for your own clips::

       msrvtt/annotations/{train,val,test}.jsonl   one JSON object per line:
           {"video_id": "video0", "caption": "a man sings", "category": 0}   (category optional)
       msrvtt/videos/<video_id>.npy    (F, H, W, 3) uint8, or float in [0, 1]
       msrvtt/videos/<video_id>/       frame images 000.png, 001.png, ... (PNG or JPEG, sorted by name)
       msrvtt/videos/<video_id>.mp4    (also .avi/.webm/.mkv/.mov; needs PyAV: ``pip install av``,
                                       since torchvision 0.26 no longer decodes video)

2. the canonical archive unpacked in place (``MSRVTT.zip`` of Frozen in Time, Bain et al.
   2021, which most CLIP retrieval work uses): ``msrvtt/MSRVTT/annotation/MSR_VTT.json``
   (COCO-style ``annotations`` with ``image_id`` and ``caption``), the split lists in
   ``MSRVTT/high-quality/structured-symlinks/`` and ``MSRVTT/videos/all/<video_id>.mp4``.
   Retrieval uses the 1k-A ("JSFusion") split: train = the 9,000 videos of
   ``train_list_jsfusion.txt`` with all their captions; test = the 1,000 videos of
   ``val_list_jsfusion.txt`` with the caption ``jsfusion_val_caption_idx.pkl`` picks for each.
   As in the Frozen in Time and CLIP4Clip code there is no separate validation set: val reads
   the test videos, so select models on a part of train for numbers you report. The category
   task uses the official 6,513 / 497 / 2,990 split (``*_list_full.txt``) and needs a
   ``category`` per video in ``MSR_VTT.json`` (``images`` or ``videos`` entries).
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from zoo.catalog.datasets import DataError, DatasetSpec, RemoteFile, data_root, register_dataset
from zoo.catalog.download import download
from zoo_domains.video_text.clips import VIDEO_SUFFIXES, find_clip, read_clip

MSRVTT_URL = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
# Upstream publishes no checksum for MSRVTT.zip, so it is not verified (sha256=None).
MSRVTT_ARCHIVE = RemoteFile("MSRVTT.zip", MSRVTT_URL, sha256=None)
CATEGORIES = (
    "music", "people", "gaming", "sports/actions", "news/events/politics", "education", "tv shows",
    "movie/comedy", "animation", "vehicles/autos", "howto", "travel", "science/technology",
    "animals/pets", "kids/family", "documentary", "food/drink", "cooking", "beauty/fashion", "advertisement",
)  # fmt: skip
SPLITS = ("train", "val", "test")
CANONICAL_LISTS = {
    "retrieval": {"train": "train_list_jsfusion.txt", "val": "val_list_jsfusion.txt", "test": "val_list_jsfusion.txt"},
    "category": {"train": "train_list_full.txt", "val": "val_list_full.txt", "test": "test_list_full.txt"},
}


@dataclass(frozen=True)
class Record:
    video_id: str
    caption: str
    category: int | None
    where: str
    """The annotation (file and line) that named this pair, for error messages."""


# -- reading annotations --------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[Record]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(entry, dict) or "video_id" not in entry or "caption" not in entry:
                raise DataError(f"{where}: each line needs 'video_id' and 'caption', got {line.strip()[:120]!r}")
            records.append(_record(entry["video_id"], entry["caption"], entry.get("category"), where))
    if not records:
        raise DataError(f"{path}: no annotations")
    return records


def _record(video_id, caption, category, where: str) -> Record:
    if not isinstance(video_id, str) or not video_id or "/" in video_id or video_id.startswith("."):
        raise DataError(f"{where}: video_id {video_id!r} must be a non-empty file name")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: video {video_id} has an empty caption ({caption!r})")
    if category is not None and (
        isinstance(category, bool) or not isinstance(category, int) or not 0 <= category < len(CATEGORIES)
    ):
        raise DataError(f"{where}: video {video_id} has category {category!r}; categories are 0..{len(CATEGORIES) - 1}")
    return Record(video_id, caption.strip(), category, where)


class _CaptionIndexUnpickler(pickle.Unpickler):
    """Reads the caption-index pickle of the 1k-A split without running arbitrary code: only
    numpy scalars may be rebuilt (dicts, strings and ints need no globals)."""

    ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a caption index")
        return super().find_class(module, name)


def canonical_root(directory: Path) -> Path | None:
    for root in (directory / "MSRVTT", directory):
        if (root / "annotation" / "MSR_VTT.json").is_file():
            return root
    return None


def _read_canonical(root: Path, split: str, task: str) -> list[Record]:
    annotation = root / "annotation" / "MSR_VTT.json"
    lists = root / "high-quality" / "structured-symlinks"
    list_path = lists / CANONICAL_LISTS[task][split]
    if not list_path.is_file():
        raise DataError(f"{list_path} is missing; the canonical MSRVTT.zip has it next to the other split lists")
    wanted = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    try:
        with open(annotation, encoding="utf-8") as handle:
            data = json.load(handle)
        entries = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(
            f"{annotation}: not MSR-VTT's COCO-style annotation file ({type(error).__name__}: {error})"
        ) from None
    categories = {}
    for video in data.get("images", []) + data.get("videos", []):
        if isinstance(video, dict) and "category" in video:
            categories[video.get("video_id", video.get("id"))] = video["category"]
    captions: dict[str, list[str]] = {}
    for entry in entries:
        captions.setdefault(entry.get("image_id"), []).append(entry.get("caption"))
    missing = [v for v in wanted if v not in captions]
    if missing:
        raise DataError(
            f"{list_path} names video {missing[0]} ({len(missing)} in all), which has no caption in {annotation}"
        )
    if task == "category":
        if not categories:
            raise DataError(
                f"{annotation} has no 'category' per video; msrvtt_category needs one (take them from MSR-VTT's "
                f"train_val_videodatainfo.json, or write annotations/{split}.jsonl with a category field)"
            )
        return [_record(v, captions[v][0], categories.get(v), f"{annotation} (video {v})") for v in wanted]
    if split == "train":
        return [_record(v, c, categories.get(v), f"{annotation} (video {v})") for v in wanted for c in captions[v]]
    picks = _test_caption_picks(lists / "jsfusion_val_caption_idx.pkl")
    return [
        _record(v, captions[v][int(picks.get(v, 0))], categories.get(v), f"{annotation} (video {v})") for v in wanted
    ]


def _test_caption_picks(path: Path) -> dict[str, int]:
    try:
        with open(path, "rb") as handle:
            picks = _CaptionIndexUnpickler(handle).load()
        return {str(k): int(v) for k, v in dict(picks).items()}
    except (OSError, pickle.UnpicklingError, EOFError, TypeError, ValueError) as error:
        warnings.warn(
            f"{path} could not be read ({type(error).__name__}: {error}); using each test video's first caption, "
            f"which is not the exact 1k-A query set",
            stacklevel=3,
        )
        return {}


def read_records(directory: Path, split: str, task: str) -> tuple[list[Record], Path]:
    """The annotations of ``split`` and the folder holding the clips."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    jsonl = directory / "annotations" / f"{split}.jsonl"
    if jsonl.is_file():
        return _read_jsonl(jsonl), directory / "videos"
    root = canonical_root(directory)
    if root is not None:
        return _read_canonical(root, split, task), root / "videos"
    raise DataError(
        f"{directory} has neither annotations/{split}.jsonl (zoo's layout) nor MSRVTT/annotation/MSR_VTT.json "
        f"(the canonical archive unpacked). Fetch the archive with zoo_domains.video_text.data.download_msrvtt() "
        f"({MSRVTT_URL}) or lay out your clips as described in zoo_domains/video_text/data.py"
    )


def _resolve_clips(records: list[Record], videos: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for record in records:
        if record.video_id in paths:
            continue
        path = find_clip(videos, record.video_id)
        if path is None:
            raise DataError(
                f"{record.where} names video {record.video_id!r}, but {videos} has no {record.video_id}.npy, "
                f"{record.video_id}/ (frames) or {record.video_id}{{{','.join(VIDEO_SUFFIXES)}}}"
            )
        paths[record.video_id] = path
    return paths


# -- datasets -------------------------------------------------------------------------------------
class MsrvttRetrieval(Dataset):
    """(video, caption) pairs: items ``((frames, caption), video_index)``; pairs of one video share its index."""

    def __init__(self, directory: Path, split: str, num_frames: int = 8) -> None:
        self.records, videos = read_records(Path(directory), split, "retrieval")
        self.paths = _resolve_clips(self.records, videos)
        self.video_ids = list(self.paths)
        self.video_index = {video_id: i for i, video_id in enumerate(self.video_ids)}
        self.num_frames = num_frames

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        frames = read_clip(self.paths[record.video_id], self.num_frames)
        return (frames, record.caption), self.video_index[record.video_id]


class MsrvttCategories(Dataset):
    """One item per video: ``(frames, category)`` with the 20 MSR-VTT categories."""

    def __init__(self, directory: Path, split: str, num_frames: int = 8) -> None:
        records, videos = read_records(Path(directory), split, "category")
        categories: dict[str, int] = {}
        for record in records:
            if record.category is None:
                raise DataError(f"{record.where}: video {record.video_id} has no category, which msrvtt_category needs")
            if categories.setdefault(record.video_id, record.category) != record.category:
                raise DataError(
                    f"{record.where}: video {record.video_id} has category {record.category}, elsewhere {categories[record.video_id]}"
                )
        self.paths = _resolve_clips(records, videos)
        self.video_ids = list(categories)
        self.labels = [categories[v] for v in self.video_ids]
        self.num_frames = num_frames

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int):
        return read_clip(self.paths[self.video_ids[index]], self.num_frames), self.labels[index]


def download_msrvtt(root: str | Path | None = None) -> Path:
    """Download the canonical MSRVTT.zip into ``<root>/msrvtt`` and unpack it there."""
    directory = data_root(root) / "msrvtt"
    archive = directory / MSRVTT_ARCHIVE.path
    if not archive.exists():
        download(MSRVTT_ARCHIVE.url, archive, MSRVTT_ARCHIVE.sha256, "dataset msrvtt")
    if canonical_root(directory) is None:
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(directory)
        except zipfile.BadZipFile as error:
            raise DataError(f"{archive}: not a readable zip archive ({error}); delete it and download again") from None
    return directory


# -- fixture --------------------------------------------------------------------------------------
FIXTURE_VIDEOS = {"train": range(0, 6), "val": range(6, 8), "test": range(8, 10)}
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}


def synthetic_clip(index: int, frames: int = 5, height: int = 24, width: int = 32) -> tuple[np.ndarray, str, int]:
    """A square of one colour moving right or left on grey: (frames, H, W, 3) uint8, its caption, a category."""
    name, colour = list(COLOURS.items())[index % 3]
    direction = "right" if index % 2 == 0 else "left"
    clip = np.full((frames, height, width, 3), 128, dtype=np.uint8)
    for t in range(frames):
        step = t if direction == "right" else frames - 1 - t
        left = 2 + step * (width - 12) // max(frames - 1, 1)
        clip[t, 8:16, left : left + 8] = colour
    return clip, f"a {name} square moves to the {direction}", index % 3


def make_fixture(directory: Path) -> None:
    """A tiny copy in zoo's layout: .npy clips and PNG frame folders, two captions per training video."""
    from PIL import Image

    directory = Path(directory)
    (directory / "annotations").mkdir(parents=True, exist_ok=True)
    (directory / "videos").mkdir(parents=True, exist_ok=True)
    for split, indices in FIXTURE_VIDEOS.items():
        lines = []
        for index in indices:
            clip, caption, category = synthetic_clip(index, frames=5 + index % 3)
            video_id = f"video{index}"
            if index % 2 == 0:
                np.save(directory / "videos" / f"{video_id}.npy", clip)
            else:
                folder = directory / "videos" / video_id
                folder.mkdir(exist_ok=True)
                for t, frame in enumerate(clip):
                    Image.fromarray(frame).save(folder / f"{t:03d}.png")
            captions = [caption, f"{caption} on a grey background"] if split == "train" else [caption]
            lines += [json.dumps({"video_id": video_id, "caption": c, "category": category}) for c in captions]
        (directory / "annotations" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


register_dataset(
    DatasetSpec(
        name="msrvtt",
        domain="video_text",
        task="retrieval",
        load=lambda directory, split, **options: MsrvttRetrieval(directory, split, **options),
        make_fixture=make_fixture,
        folder="msrvtt",
        files=(),  # the archive is fetched on request (download_msrvtt); an own layout needs no archive
        licence="MSR-VTT: research use (Microsoft Research); clips from YouTube",
        description="MSR-VTT text-to-video retrieval, 1k-A split (9k train videos, 1k test pairs)",
        extras={"canonical": MSRVTT_ARCHIVE},
    )
)

register_dataset(
    DatasetSpec(
        name="msrvtt_category",
        domain="video_text",
        task="classification",
        load=lambda directory, split, **options: MsrvttCategories(directory, split, **options),
        make_fixture=make_fixture,
        folder="msrvtt",
        files=(),
        num_classes=len(CATEGORIES),
        licence="MSR-VTT: research use (Microsoft Research); clips from YouTube",
        description="MSR-VTT video categories (20 classes), official 6,513/497/2,990 split",
        extras={"canonical": MSRVTT_ARCHIVE, "classes": CATEGORIES},
    )
)
