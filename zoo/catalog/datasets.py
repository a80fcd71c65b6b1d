"""Dataset registry, data roots and local layouts.

Every dataset has a canonical source (URL + sha256 per file), a folder under the data
root, a loader for that layout and a tiny synthetic fixture in the same layout for tests.
The data root is, in order: the ``root`` argument (config key ``data.root``), the
environment variable ``ZOO_DATA_DIR``, then ``data/`` under zoo's cache root (:mod:`zoo.cache`:
``$ZOO_CACHE_DIR``, else ``~/.cache/zoo`` or the platform's equivalent). An existing local copy
is always read as is: the canonical files, or any other layout the dataset documents
(``DatasetSpec.local_layouts``, e.g. a held-out TSV copy). Only when neither is there is a
missing file downloaded and verified.
"""

from __future__ import annotations

import functools
import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any, Callable, Sized, cast

from torch.utils.data import Dataset

from zoo.cache import cache_dir
from zoo.catalog.download import ChecksumWarning, check_local_copy, download, sha256_of
from zoo.catalog.input_transforms import TransformOptions, split_transform_options, with_input_transform
from zoo.catalog.registry import Registry
from zoo.errors import DataError, MissingDataError


@dataclass(frozen=True)
class RemoteFile:
    path: str
    """Where the file lives under the dataset folder."""
    url: str
    sha256: str | None = None
    md5: str | None = None
    """Where upstream publishes only an MD5 (MedMNIST), that is verified instead."""
    unpack: str | None = None
    """When ``url`` is an archive (.tar.gz, .tgz, .tar, .zip): its folder to unpack into the dataset
    folder (``""`` for the archive's root); ``path`` is then what exists once it is unpacked. The
    checksums are the archive's, so an unpacked local copy is used as is."""
    split: str | None = None
    """The split that needs this file; None: every split does."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    domain: str
    task: str
    """A task kind registered with :func:`zoo.tasks.train_tasks.register_task_builder` (``zoo ls tasks``)."""
    load: Callable[..., Dataset]
    """``load(dataset_dir, split, **options) -> Dataset``."""
    make_fixture: Callable[[Path], None]
    """Writes a tiny synthetic copy in the same layout into the given folder."""
    folder: str | None
    """Folder under the data root; None for generic formats where ``root`` is the data itself."""
    files: tuple[RemoteFile, ...] = ()
    local_layouts: tuple[tuple[str, ...], ...] = ()
    """Other sets of files (under the dataset folder) that the loader reads as a whole local copy;
    when every file of one of them is there, nothing is downloaded."""
    splits: tuple[str, ...] = ("train", "val", "test")
    num_classes: int | None = None
    licence: str = ""
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    input_transform: TransformOptions | None = None
    """Options that choose a transform of every input rather than what is read (``residues=1-56``): not
    passed to ``load``; the items are wrapped instead, and the transform is recorded with the run and applied
    to every input the model is given afterwards (:mod:`zoo.catalog.input_transforms`)."""


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    # The task kind is checked where it is used (a run's task builder, `zoo ls`), since the domain
    # that registers the kind may load after the one that registers the dataset.
    return DATASETS.add(spec.name, spec)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$ZOO_DATA_DIR``, else ``data/`` under the cache root (which ``ZOO_CACHE_DIR`` moves)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("ZOO_DATA_DIR"):
        return Path(os.environ["ZOO_DATA_DIR"]).expanduser()
    return cache_dir("data")


def dataset_dir(spec: DatasetSpec, root: str | os.PathLike | None = None) -> Path:
    base = data_root(root)
    return base / spec.folder if spec.folder else base


def local_layout(spec: DatasetSpec, directory: Path) -> tuple[str, ...] | None:
    """The first of ``spec.local_layouts`` whose files are all in ``directory``; None if none is."""
    for layout in spec.local_layouts:
        if all((directory / name).exists() for name in layout):
            return layout
    return None


def local_copy_present(spec: DatasetSpec, directory: Path) -> bool:
    """Whether ``directory`` holds a copy the loader reads as it is: every canonical file, or a local layout."""
    return all((directory / f.path).exists() for f in spec.files) or local_layout(spec, directory) is not None


def ensure_files(
    spec: DatasetSpec, root: str | os.PathLike | None = None, allow_download: bool = True, split: str | None = None
) -> Path:
    """The dataset folder with every canonical file present (downloaded and verified if missing);
    with ``split``, only the files that split needs. A folder in one of the dataset's local layouts
    is used as it is: its loader knows which file each split reads."""
    directory = dataset_dir(spec, root)
    in_local_layout = local_layout(spec, directory) is not None
    for remote in spec.files:
        if split is not None and remote.split not in (None, split):
            continue
        path = directory / remote.path
        if path.exists():
            if remote.unpack is None:
                check_local_copy(path, remote.sha256, f"dataset {spec.name}", md5=remote.md5)
        elif in_local_layout:
            continue
        elif allow_download and remote.unpack is not None:
            _download_and_unpack(remote, remote.unpack, directory, f"dataset {spec.name}")
        elif allow_download:
            download(remote.url, path, remote.sha256, f"dataset {spec.name}", md5=remote.md5)
        else:
            raise MissingDataError(
                f"dataset {spec.name}: {path} is missing. Download {remote.url} to that path, or set data.root / "
                f"ZOO_DATA_DIR to a folder holding {spec.folder}/{remote.path}"
            )
    return directory


def _download_and_unpack(remote: RemoteFile, folder: str, directory: Path, what: str) -> None:
    """Fetch an archive (verified), unpack its folder ``folder`` (``remote.unpack``) into ``directory``, drop
    the archive."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=directory) as scratch:
        archive = download(
            remote.url, Path(scratch) / remote.url.rsplit("/", 1)[-1], remote.sha256, what, md5=remote.md5
        )
        unpacked = Path(scratch) / "unpacked"
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(unpacked)
        else:
            with tarfile.open(archive) as handle:
                handle.extractall(unpacked, filter="data")  # refuses absolute paths and links out of the folder
        source = unpacked / folder
        if not (source / remote.path).exists():
            raise DataError(f"{what}: the archive {remote.url} has no {folder}/{remote.path}; it was not used")
        for child in source.iterdir():
            if not (directory / child.name).exists():
                shutil.move(str(child), directory / child.name)


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    allow_download: bool = True,
    **options: Any,
) -> Dataset:
    spec = DATASETS.get(name)
    if split not in spec.splits:
        raise DataError(f"dataset {name}: unknown split {split!r}; available: {', '.join(spec.splits)}")
    if spec.folder is None and root is None:
        raise MissingDataError(
            f"dataset {name} reads your own files: pass root=<folder> (config key data.root) pointing at them"
        )
    directory = ensure_files(spec, root, allow_download, split) if spec.files else dataset_dir(spec, root)
    if not directory.exists():
        raise MissingDataError(
            f"dataset {name}: folder {directory} does not exist; set data.root / ZOO_DATA_DIR correctly"
        )
    transform, options = split_transform_options(spec.input_transform, options, f"dataset {name}")
    return with_input_transform(spec.load(directory, split, **options), transform)


# -- what was read ----------------------------------------------------------------------
# Model cards and `zoo ls datasets` report the files actually read, since a local copy may be a subset, a
# re-split or a reordering of the canonical one (e.g. a held-out AG News dev.tsv split into train/val/test).
@dataclass(frozen=True)
class SplitSource:
    split: str
    rows: int
    """Examples in the split as read (before any data.max_*_examples subset)."""
    file: Path | None
    """The file read; None when a split comes from a folder of files (e.g. audio clips)."""
    sha256: str | None = None
    selection: str = ""
    """Which rows of ``file``, when not all (a split made from one file)."""
    canonical: bool | None = None
    """False: the file's checksum differs from the canonical one; None: no difference was found (or nothing
    was checked: a held-out layout has no canonical checksum)."""

    def summary(self) -> str:
        """``train: train.tsv, 67,349 rows, sha256 8621df47b79e (differs from the canonical file)``."""
        where = self.file.name if self.file else "files in the dataset folder"
        where += f" ({self.selection})" if self.selection else ""
        text = f"{self.split}: {where}, {self.rows:,} rows"
        text += f", sha256 {self.sha256[:12]}" if self.sha256 else ""
        return text + (" (differs from the canonical file)" if self.canonical is False else "")


def describe_split(
    spec: DatasetSpec, dataset: Dataset, split: str, directory: Path | None, differing: AbstractSet[Path] = frozenset()
) -> SplitSource:
    """Where a loaded split came from: the dataset's ``source`` file if it names one, else the one canonical
    file its split reads. ``differing``: files a ChecksumWarning named while it was loaded."""
    file = getattr(dataset, "source", None)
    if not (isinstance(file, (str, os.PathLike)) and Path(file).is_file()):
        candidates = (
            [directory / f.path for f in spec.files if f.split in (None, split) and f.unpack is None]
            if directory
            else []
        )
        file = candidates[0] if len(candidates) == 1 and candidates[0].is_file() else None
    file = Path(file) if file is not None else None
    canonical = False if file is not None and file.resolve() in {p.resolve() for p in differing} else None
    return SplitSource(
        split=split,
        rows=len(cast(Sized, dataset)),  # map-style datasets have a length; torch's Dataset type does not declare it
        file=file,
        sha256=sha256_of(file) if file is not None else None,
        selection=getattr(dataset, "selection", "") or "",
        canonical=canonical,
    )


def load_noting_checksums(load: Callable[[], Dataset]) -> tuple[Dataset, set[Path]]:
    """``load()``, and the files its ChecksumWarnings name (passed on, so they are still shown)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load()
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return dataset, {w.message.path for w in caught if isinstance(w.message, ChecksumWarning) and w.message.path}


def describe_local_copy(spec: DatasetSpec, root: str | os.PathLike | None = None) -> list[str]:
    """One line per split of the copy under the data root (file, rows, checksum), read as a run would read
    it; empty when there is no local copy there. Nothing is downloaded."""
    directory = dataset_dir(spec, root)
    if spec.folder is None or not directory.exists() or not local_copy_present(spec, directory):
        return []
    lines = []
    for split in spec.splits:
        try:
            dataset, differing = load_noting_checksums(
                functools.partial(load_dataset, spec.name, split, root, allow_download=False)
            )
        except (DataError, FileNotFoundError) as error:
            lines.append(f"{split}: cannot be read ({' '.join(str(error).split())})")
            continue
        lines.append(describe_split(spec, dataset, split, directory, differing).summary())
    return lines
