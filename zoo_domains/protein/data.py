"""Protein datasets: FLIP GB1 fitness, FLIP secondary structure, and your own CSV / FASTA files.

Every item is ``(sequence, label)`` with ``sequence`` a string of one-letter residue codes
(what the protein backbones' ``collate`` takes). Letters outside the ESM alphabet are an
error that names the file, the row or record, and the letter.

FLIP (Dallago et al. 2021, "FLIP: Benchmark tasks in fitness landscape inference for
proteins", NeurIPS Datasets and Benchmarks; https://github.com/J-SNACKKB/FLIP) publishes
each task as a ``splits.zip``. FLIP publishes no checksums and has re-packed these zips
(FASTA copies were added in 2023), so no checksum is pinned: a local copy is read as is.

Per-residue labels are aligned with the backbone's tokens: ESM-2 puts ``<cls>`` before
and ``<eos>`` after the residues (AntiBERTy ``[CLS]`` and ``[SEP]``), so a sequence of L residues has labels
``[-100, y_1, ..., y_L, -100]`` (``label_padding=(1, 1)``; -100 is ignored by the loss and
by Q3). Padding a batch's labels with -100 at the end then matches the padded tokens.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from zoo.catalog.datasets import DataError, DatasetSpec, RemoteFile, register_dataset
from zoo.catalog.input_transforms import TransformOptions
from zoo.tasks.heads import IGNORE_INDEX
from zoo_domains.protein.backbones import check_sequence
from zoo_domains.protein.files import (
    header_attributes,
    read_csv_rows,
    read_fasta,
    read_text,
    read_zip_text,
    zip_members,
)
from zoo_domains.protein.transforms import WINDOW_PARAMETERS

FLIP_GB1_URL = "https://github.com/J-SNACKKB/FLIP/raw/main/splits/gb1/splits.zip"
FLIP_SECONDARY_STRUCTURE_URL = "https://github.com/J-SNACKKB/FLIP/raw/main/splits/secondary_structure/splits.zip"
# FLIP also mirrors its tasks as FASTA under http://data.bioembeddings.com/public/FLIP/fasta/.
GB1_SPLIT_NAMES = ("one_vs_rest", "two_vs_rest", "three_vs_rest", "low_vs_high", "sampled")
SECONDARY_STRUCTURE_STATES = ("C", "E", "H")
"""Coil, strand (sheet), helix: class indices 0, 1, 2."""
SPLITS = ("train", "val", "test")


class SequenceDataset(Dataset):
    """``(sequence, label)`` pairs held in memory."""

    def __init__(self, sequences: list[str], labels: list[torch.Tensor], source: str) -> None:
        self.sequences, self.labels, self.source = sequences, labels, source

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        return self.sequences[index], self.labels[index]

    def __repr__(self) -> str:
        return f"SequenceDataset({len(self)} sequences from {self.source})"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def _in_split(split: str, set_value: str, validation: str | None, where: str) -> bool:
    """FLIP's convention: ``set`` is train/test; train rows flagged ``validation`` form val."""
    set_value = set_value.strip().lower()
    if set_value not in ("train", "test"):
        raise DataError(f"{where}: set {set_value!r} is not allowed; FLIP uses 'train' or 'test'")
    if split == "test":
        return set_value == "test"
    return set_value == "train" and _flag(validation) == (split == "val")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")


def _float(value: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise DataError(f"{where}: target {value!r} is not a finite number")
    return number


def _class_index(value: str, where: str, num_classes: int | None) -> int:
    try:
        label = int(value.strip())
    except (AttributeError, ValueError):
        raise DataError(f"{where}: label {value!r} is not an integer class index") from None
    limit = f"0..{num_classes - 1}" if num_classes else "0 or more"
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise DataError(f"{where}: label {label} is out of range; allowed: {limit}")
    return label


# -- FLIP GB1 ----------------------------------------------------------------------


def load_flip_gb1(directory: Path, split: str, split_name: str = "three_vs_rest") -> SequenceDataset:
    """FLIP GB1 (Wu et al. 2016 fitness of 4-site variants): ``splits.zip`` holds
    ``splits/<split_name>.csv`` with columns ``sequence,target,set,validation``. FLIP's sequences are
    265 residues: GB1 (1-56, where the four sites V39, D40, G41 and V54 lie) fused to a partner that
    no variant changes. The dataset's option ``residues="1-56"`` keeps that window only (the same
    information for a fifth of the compute, though not FLIP's input as published): it is the input
    transform ``residue_window`` (:mod:`zoo_domains.protein.transforms`), applied to the whole sequences
    read here and, with the run recorded, to every sequence its model is given."""
    _check_split(split)
    archive = Path(directory) / "splits.zip"
    members = zip_members(archive)
    available = sorted(n[: -len(".csv")] for n in members if n.endswith(".csv"))
    if f"{split_name}.csv" not in members:
        raise DataError(f"{archive}: no split_name {split_name!r}; available: {', '.join(available) or '(none)'}")
    member = members[f"{split_name}.csv"]
    where = f"{archive}:{member}"
    rows = read_csv_rows(read_zip_text(archive, member), where, ("sequence", "target", "set"))
    if split == "val" and rows and "validation" not in rows[0][1]:
        raise DataError(f"{where} has no 'validation' column, so it defines no val split")
    sequences, labels = [], []
    for line, row in rows:
        row_where = f"{where} line {line}"
        if not _in_split(split, row["set"], row.get("validation"), row_where):
            continue
        sequences.append(check_sequence(row["sequence"], row_where))
        labels.append(torch.tensor(_float(row["target"], row_where), dtype=torch.float32))
    return SequenceDataset(sequences, labels, f"{where} ({split})")


GB1_FIXTURE_PARTNER = "LEVLFQGPLDPNSMATYEVLCEVA"
"""The start of the partner FLIP's GB1 is fused to (residues 57-80 of its sequences): fixture sequences are
whole as FLIP's are, longer than the GB1 window 1-56."""


def _gb1_rows(count: int = 16) -> list[tuple[str, float]]:
    wild_type = "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"
    sites, residues = (38, 39, 40, 53), "ACDEFGHIKLMNPQRSTVWY"
    rows = []
    for i in range(count):
        sequence = list(wild_type)
        for j, site in enumerate(sites[: i % 4 + 1] if i else ()):
            sequence[site] = residues[(7 * i + 3 * j) % 20]
        rows.append(("".join(sequence) + GB1_FIXTURE_PARTNER, round(1.0 - 0.06 * i, 4)))
    return rows


def make_flip_gb1_fixture(directory: Path) -> None:
    """``splits.zip`` with ``splits/<name>.csv`` for every FLIP GB1 split name, a few rows each."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(directory / "splits.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name in GB1_SPLIT_NAMES:
            text = io.StringIO(newline="")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(["sequence", "target", "set", "validation"])
            for i, (sequence, target) in enumerate(_gb1_rows()):
                set_value = "test" if i >= 10 else "train"
                writer.writerow([sequence, target, set_value, "True" if i in (2, 7) else ""])
            archive.writestr(f"splits/{name}.csv", text.getvalue())


# -- FLIP secondary structure -------------------------------------------------------


def _structure_labels(states: str, mask: str | None, where: str, padding: tuple[int, int]) -> torch.Tensor:
    index = {state: i for i, state in enumerate(SECONDARY_STRUCTURE_STATES)}
    bad = set(states) - set(index)
    if bad:
        raise DataError(
            f"{where}: secondary-structure label {min(bad)!r} is not allowed; allowed: {', '.join(SECONDARY_STRUCTURE_STATES)}"
        )
    if mask is not None and set(mask) - {"0", "1"}:
        raise DataError(
            f"{where}: mask may hold only 0 (unresolved, ignored) and 1, found {sorted(set(mask) - {'0', '1'})}"
        )
    values = [index[s] if mask is None or mask[i] == "1" else IGNORE_INDEX for i, s in enumerate(states)]
    before, after = padding
    return torch.tensor([IGNORE_INDEX] * before + values + [IGNORE_INDEX] * after, dtype=torch.long)


def _check_lengths(sequence: str, labels: str, mask: str | None, where: str) -> None:
    if len(labels) != len(sequence):
        raise DataError(
            f"{where}: {len(labels)} per-residue labels for a sequence of {len(sequence)} residues; they must match"
        )
    if mask is not None and len(mask) != len(sequence):
        raise DataError(
            f"{where}: mask of length {len(mask)} for a sequence of {len(sequence)} residues; they must match"
        )


def load_flip_secondary_structure(
    directory: Path, split: str, split_name: str = "sampled", label_padding: tuple[int, int] = (1, 1)
) -> SequenceDataset:
    """FLIP secondary structure (3 states, NetSurfP-2.0 data). ``splits.zip`` holds
    ``splits/sequences.fasta`` (``>ID`` + residues), ``splits/<split_name>.fasta`` (``>ID SET=train
    VALIDATION=False`` + one H/E/C per residue) and optionally ``splits/mask.fasta`` (``>ID`` + one
    0/1 per residue, 0 = unresolved, ignored). FLIP's earlier CSV form, ``splits/<split_name>.csv``
    with ``sequence,target,set,validation`` (target = the H/E/C string), is read too."""
    _check_split(split)
    if not (
        isinstance(label_padding, (tuple, list))
        and len(label_padding) == 2
        and all(isinstance(n, int) and n >= 0 for n in label_padding)
    ):
        raise DataError(
            f"label_padding={label_padding!r} must be two counts (before, after), e.g. (1, 1) for ESM's <cls> and <eos>"
        )
    archive = Path(directory) / "splits.zip"
    members = zip_members(archive)
    padding = tuple(label_padding)
    if f"{split_name}.fasta" in members and "sequences.fasta" in members:
        return _secondary_structure_fasta(archive, members, split, split_name, padding)
    if f"{split_name}.csv" in members:
        member = members[f"{split_name}.csv"]
        where = f"{archive}:{member}"
        sequences, labels = [], []
        for line, row in read_csv_rows(read_zip_text(archive, member), where, ("sequence", "target", "set")):
            row_where = f"{where} line {line}"
            if _in_split(split, row["set"], row.get("validation"), row_where):
                sequence = check_sequence(row["sequence"], row_where)
                _check_lengths(sequence, row["target"], None, row_where)
                sequences.append(sequence)
                labels.append(_structure_labels(row["target"], None, row_where, padding))
        return SequenceDataset(sequences, labels, f"{where} ({split})")
    names = sorted({n.rsplit(".", 1)[0] for n in members if n.endswith((".fasta", ".csv"))} - {"sequences", "mask"})
    raise DataError(
        f"{archive}: no split_name {split_name!r} (expected splits/sequences.fasta with splits/{split_name}.fasta, "
        f"or splits/{split_name}.csv); available: {', '.join(names) or '(none)'}"
    )


def _secondary_structure_fasta(
    archive: Path, members: dict[str, str], split: str, split_name: str, padding
) -> SequenceDataset:
    def records(name: str) -> tuple[str, list[tuple[str, str]]]:
        where = f"{archive}:{members[name]}"
        return where, read_fasta(read_zip_text(archive, members[name]), where)

    sequence_where, sequence_records = records("sequences.fasta")
    sequences_by_id = {header_attributes(h)[0]: s for h, s in sequence_records if h}
    masks_by_id = None
    if "mask.fasta" in members:
        masks_by_id = {header_attributes(h)[0]: s for h, s in records("mask.fasta")[1] if h}
    label_where, label_records = records(f"{split_name}.fasta")
    sequences, labels = [], []
    for header, states in label_records:
        if not header:
            raise DataError(f"{label_where}: a record has an empty '>' header")
        identifier, attributes = header_attributes(header)
        where = f"{label_where} record {identifier}"
        if "set" not in attributes:
            raise DataError(f"{where}: header {header!r} lacks SET=train|test")
        if not _in_split(split, attributes["set"], attributes.get("validation"), where):
            continue
        if identifier not in sequences_by_id:
            raise DataError(f"{where}: no sequence with this ID in {sequence_where}")
        sequence = check_sequence(sequences_by_id[identifier], f"{sequence_where} record {identifier}")
        mask = None if masks_by_id is None else masks_by_id.get(identifier)
        _check_lengths(sequence, states, mask, where)
        sequences.append(sequence)
        labels.append(_structure_labels(states, mask, where, padding))
    return SequenceDataset(sequences, labels, f"{label_where} ({split})")


def make_flip_secondary_structure_fixture(directory: Path) -> None:
    """``splits.zip`` with ``splits/sequences.fasta``, ``splits/sampled.fasta`` and ``splits/mask.fasta``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    proteins = [
        ("MKTAYIAKQRQISFVKSHFSRQ", "CCHHHHHHHHHHCCEEEEECCC"),
        ("GSHMLEDPVAVVTGAS", "CCCCCCEEEEEECCCC"),
        ("MSEEKAVLIVGLGRAG", "CCCCEEEEEECHHHHC"),
        ("PEELKKLLEELAKRHG", "CHHHHHHHHHHHHCCC"),
        ("TTYKLILNGKTLKGET", "CEEEEEECCCEEEEEC"),
        ("ADLEDNWETLNDNLKV", "CCHHHHHHHHHHHHCC"),
    ]
    sets = ["train", "train", "train", "train", "test", "test"]
    sequences = "".join(f">{i}\n{s}\n" for i, (s, _) in enumerate(proteins))
    labels = "".join(f">{i} SET={sets[i]} VALIDATION={i == 3}\n{states}\n" for i, (_, states) in enumerate(proteins))
    masks = "".join(f">{i}\n{'0' + '1' * (len(s) - 2) + '0'}\n" for i, (s, _) in enumerate(proteins))
    with zipfile.ZipFile(directory / "splits.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("splits/sequences.fasta", sequences)
        archive.writestr("splits/sampled.fasta", labels)
        archive.writestr("splits/mask.fasta", masks)


# -- your own files -----------------------------------------------------------------

CSV_LAYOUT = "<root>/{train,val,test}.csv with a header and columns sequence,label"
FASTA_LAYOUT = "<root>/{train,val,test}.fasta with headers '>ID label=VALUE' (target=VALUE also read)"


def _label_parser(task: str, num_classes: int | None) -> Callable[[str, str], torch.Tensor]:
    if task == "classification":
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise DataError(f"num_classes={num_classes!r} must be an integer of at least 2")
        return lambda value, where: torch.tensor(_class_index(value, where, num_classes), dtype=torch.long)
    if num_classes is not None:
        raise DataError(f"num_classes={num_classes!r} applies to classification; regression labels are numbers")
    return lambda value, where: torch.tensor(_float(value, where), dtype=torch.float32)


def load_sequence_csv(directory: Path, split: str, task: str, num_classes: int | None = None) -> SequenceDataset:
    _check_split(split)
    path = Path(directory) / f"{split}.csv"
    parse = _label_parser(task, num_classes)
    sequences, labels = [], []
    for line, row in read_csv_rows(read_text(path, CSV_LAYOUT), str(path), ("sequence", "label")):
        where = f"{path} line {line}"
        sequences.append(check_sequence(row["sequence"], where))
        labels.append(parse(row["label"], where))
    return SequenceDataset(sequences, labels, str(path))


def load_sequence_fasta(directory: Path, split: str, task: str, num_classes: int | None = None) -> SequenceDataset:
    _check_split(split)
    path = Path(directory) / f"{split}.fasta"
    parse = _label_parser(task, num_classes)
    sequences, labels = [], []
    for header, sequence in read_fasta(read_text(path, FASTA_LAYOUT), str(path)):
        identifier, attributes = header_attributes(header) if header else ("", {})
        where = f"{path} record {identifier or '(no ID)'}"
        value = attributes.get("label", attributes.get("target"))
        if value is None:
            raise DataError(f"{where}: header {header!r} has no label=VALUE; expected {FASTA_LAYOUT}")
        sequences.append(check_sequence(sequence, where))
        labels.append(parse(value, where))
    return SequenceDataset(sequences, labels, str(path))


def _own_rows(task: str) -> list[tuple[str, str]]:
    sequences = [
        "MKTAYIAKQRQISFVK",
        "GSHMLEDPVAVVTGAS",
        "MSEEKAVLIVGLGRAG",
        "PEELKKLLEELAKRHG",
        "TTYKLILNGKTLKGET",
        "ADLEDNWETLNDNLKV",
    ]
    return [(s, str(i % 2) if task == "classification" else f"{0.5 * i - 1:.2f}") for i, s in enumerate(sequences)]


def _make_own_fixture(kind: str, task: str) -> Callable[[Path], None]:
    def make_fixture(directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = _own_rows(task)
        for split in SPLITS:
            if kind == "csv":
                text = "sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows)
            else:
                text = "".join(f">{split}_{i} label={y}\n{s}\n" for i, (s, y) in enumerate(rows))
            (directory / f"{split}.{kind}").write_text(text)

    return make_fixture


# -- registration ------------------------------------------------------------------

register_dataset(
    DatasetSpec(
        name="flip_gb1",
        domain="protein",
        task="regression",
        load=load_flip_gb1,
        make_fixture=make_flip_gb1_fixture,
        folder="flip/gb1",
        files=(RemoteFile("splits.zip", FLIP_GB1_URL, sha256=None),),  # FLIP publishes no checksum
        licence="AFL-3.0 (FLIP splits); raw data CC BY 4.0 (Wu et al. 2016)",
        description="FLIP GB1: binding fitness of 4-site variants of protein G domain B1; Spearman rho. "
        "Option split_name: " + ", ".join(GB1_SPLIT_NAMES) + " (default three_vs_rest); residues=FIRST-LAST "
        "keeps that window of each sequence (1-56: GB1 without its fusion partner), for training and for every "
        "sequence the model is given afterwards",
        extras={"metric": "spearman", "split_names": GB1_SPLIT_NAMES},
        input_transform=TransformOptions("residue_window", WINDOW_PARAMETERS),
    )
)

register_dataset(
    DatasetSpec(
        name="flip_secondary_structure",
        domain="protein",
        task="per_residue",
        load=load_flip_secondary_structure,
        make_fixture=make_flip_secondary_structure_fixture,
        folder="flip/secondary_structure",
        files=(RemoteFile("splits.zip", FLIP_SECONDARY_STRUCTURE_URL, sha256=None),),  # FLIP publishes no checksum
        num_classes=len(SECONDARY_STRUCTURE_STATES),
        licence="AFL-3.0 (FLIP)",
        description="FLIP secondary structure: 3 states (C, E, H) per residue; Q3 accuracy. Labels are aligned "
        "with ESM tokens (-100 at <cls> and <eos>; label_padding=(before, after) changes that)",
        extras={"metric": "q3_accuracy", "states": SECONDARY_STRUCTURE_STATES, "label_padding": (1, 1)},
    )
)

for _kind, _layout, _load in (("csv", CSV_LAYOUT, load_sequence_csv), ("fasta", FASTA_LAYOUT, load_sequence_fasta)):
    for _task in ("classification", "regression"):

        def _loader(directory: Path, split: str, _load=_load, _task=_task, **options: Any) -> SequenceDataset:
            return _load(directory, split, _task, **options)

        register_dataset(
            DatasetSpec(
                name=f"protein_{_kind}" + ("_regression" if _task == "regression" else ""),
                domain="protein",
                task=_task,
                load=_loader,
                make_fixture=_make_own_fixture(_kind, _task),
                folder=None,
                description=f"your protein sequences for {_task}: {_layout}"
                + (
                    "; labels are class indices 0..C-1 (option num_classes=C checks the range)"
                    if _task == "classification"
                    else "; labels are numbers"
                ),
            )
        )
