"""Text datasets: SST-2, AG News, and your own CSV/TSV/JSONL files.

Classification items are ``(text, label)`` with ``label`` an int in ``0..num_classes-1``;
generation items are ``(source, target)`` strings. The text backbones' ``collate`` takes a
list of the texts. Files are read whole when a split is loaded; a file that is not UTF-8,
a malformed CSV row, a missing column or a label out of range raises
:class:`~zoo.catalog.datasets.DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from torch.utils.data import Dataset

from zoo.catalog.datasets import DataError, DatasetSpec, RemoteFile, register_dataset
from zoo.catalog.download import check_local_copy


class TextClassification(Dataset):
    """Texts with integer labels; ``label_names[i]`` names class i. ``source`` is the file read and
    ``selection`` which of its rows, when not all (e.g. a split made from one file)."""

    def __init__(
        self, texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str], source: Path, selection: str = ""
    ) -> None:
        self.texts, self.labels, self.label_names, self.source = list(texts), list(labels), list(label_names), source
        self.selection = selection

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], self.labels[index]


class TextPairs(Dataset):
    """Source and target texts for sequence-to-sequence generation."""

    def __init__(self, sources: Sequence[str], targets: Sequence[str], source: Path) -> None:
        self.sources, self.targets, self.source = list(sources), list(targets), source

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[str, str]:
        return self.sources[index], self.targets[index]


# -- reading files, with file and line in every error -----------------------------------
def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its newline) of a UTF-8 text file (a leading BOM is dropped)."""
    with open(path, "rb") as handle:  # decoded line by line, so an encoding error knows its line
        for line_number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}, line {line_number}: not UTF-8 text ({error.reason} at column {error.start + 1}); "
                    f"the file is corrupt or in another encoding"
                ) from None
            yield line_number, line.rstrip("\r\n")


def read_tsv(path: Path, columns: int) -> Iterator[tuple[int, list[str]]]:
    """Rows of an unquoted tab-separated file (the GLUE layout, where quotes are literal text)."""
    for line_number, line in read_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != columns:
            raise DataError(f"{path}, line {line_number}: expected {columns} tab-separated fields, found {len(fields)}")
        yield line_number, fields


def read_csv(path: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """Rows of a quoted CSV file; a malformed row (bad quoting, NUL byte, ragged columns) is a DataError."""
    lines = (line + "\n" for _, line in read_lines(path))
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    width = None
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields where earlier rows have {width}")
            yield reader.line_num, row
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({error})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for line_number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}, line {line_number}: not valid JSON ({error.msg} at column {error.colno})"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {line_number}: expected a JSON object per line, found {type(record).__name__}"
            )
        yield line_number, record


def parse_label(value: Any, label_names: Sequence[str] | None, where: str, num_classes: int | None = None) -> int:
    """An int label from an index (int or digits) or a class name, checked against the classes."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{where}: label {value!r} must be a class index or a class name")
    if isinstance(value, str):
        if label_names is None:
            raise DataError(f"{where}: label {value!r} is a name; pass labels=[...] (class names in index order)")
        if value not in label_names:
            raise DataError(f"{where}: label {value!r} is not a known class; allowed: {', '.join(label_names)}")
        return list(label_names).index(value)
    count = len(label_names) if label_names is not None else num_classes
    if value < 0 or (count is not None and value >= count):
        allowed = f"0..{count - 1}" if count is not None else "an index >= 0"
        raise DataError(f"{where}: label {value} is out of range; allowed {allowed}")
    return value


def _non_empty(path: Path, count: int) -> None:
    if count == 0:
        raise DataError(f"{path}: no examples in the file")


def _split_file(directory: Path, name: str, split: str, files: dict[str, str]) -> Path:
    path = directory / files[split]
    if not path.exists():
        raise FileNotFoundError(f"dataset {name}: split {split!r} reads {path}, which does not exist")
    return path


# -- SST-2 ---------------------------------------------------------------------------
# Socher et al. 2013, as distributed by GLUE (Wang et al. 2019). The archive holds SST-2/{train,dev,test}.tsv
# with header `sentence<TAB>label`; test has no labels, so the splits are train and val (= dev). The MD5s are
# the ones torchtext publishes for the archive and for each extracted file (no SHA-256 is published).
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
SST2_ARCHIVE_MD5 = "9f81648d4199384278b86e315dac217c"
SST2_FILES = {"train": "train.tsv", "val": "dev.tsv", "test": "dev.tsv"}
SST2_FILE_MD5 = {"train.tsv": "da409a0a939379ed32a470bc0f7fe99a", "dev.tsv": "268856b487b2a31a28c0a93daaff7288"}
SST2_LABELS = ("negative", "positive")


def load_sst2(directory: Path, split: str, val_rows: int | None = None) -> TextClassification:
    """train.tsv is train and dev.tsv val. ``val_rows=N`` holds the last N lines of train.tsv out as val instead,
    so that a model is chosen on them and dev.tsv (also the test split) stays unseen until it is scored. GLUE's
    train phrases are sub-phrases of each other, so held-out training lines select well but score too high:
    report on dev.tsv."""
    if val_rows is not None and (isinstance(val_rows, bool) or not isinstance(val_rows, int) or val_rows < 1):
        raise DataError(f"dataset sst2: val_rows={val_rows!r}; expected a positive number of train.tsv lines")
    from_train = val_rows is not None and split == "val"
    path = _split_file(directory, "sst2", "train" if from_train else split, SST2_FILES)
    check_local_copy(path, None, "dataset sst2", md5=SST2_FILE_MD5[path.name])
    texts, labels = [], []
    for line_number, fields in read_tsv(path, columns=2):
        if line_number == 1:
            if fields != ["sentence", "label"]:
                raise DataError(f"{path}, line 1: expected the header 'sentence<TAB>label', found {fields!r}")
            continue
        texts.append(fields[0].strip())
        labels.append(parse_label(fields[1], None, f"{path}, line {line_number}", num_classes=2))
    _non_empty(path, len(texts))
    if val_rows is not None and path.name == "train.tsv":
        if val_rows >= len(texts):
            raise DataError(f"dataset sst2: val_rows={val_rows} leaves no training lines ({path} has {len(texts)})")
        cut = len(texts) - val_rows
        kept = slice(cut, None) if from_train else slice(None, cut)
        which = f"the last {val_rows} lines" if from_train else f"all but the last {val_rows} lines"
        return TextClassification(texts[kept], labels[kept], SST2_LABELS, path, selection=which)
    return TextClassification(texts, labels, SST2_LABELS, path)


def make_sst2_fixture(directory: Path) -> None:
    rows = {
        "train.tsv": [
            ("a gripping , beautifully acted film ", 1),
            ("dull and far too long ", 0),
            ("the best thing about it is the music ", 1),
            ("never finds its footing ", 0),
            ("warm , funny and smart ", 1),
            ("a tedious mess ", 0),
        ],
        "dev.tsv": [("it 's a charming and often affecting journey . ", 1), ("unflinchingly bleak and desperate ", 0)],
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, examples in rows.items():
        lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in examples]
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


register_dataset(
    DatasetSpec(
        name="sst2",
        domain="text",
        task="classification",
        load=load_sst2,
        make_fixture=make_sst2_fixture,
        folder="sst2",
        files=tuple(
            RemoteFile(path=file, url=SST2_URL, md5=SST2_ARCHIVE_MD5, unpack="SST-2", split=split)
            for split, file in SST2_FILES.items()
            if split != "test"  # dev.tsv once: it is val and test
        ),
        splits=("train", "val", "test"),
        num_classes=2,
        licence="research use (Stanford Sentiment Treebank; GLUE)",
        description="SST-2 binary sentiment of movie-review phrases: train = train.tsv (GLUE's 67,349 training "
        "phrases), val and test = dev.tsv (GLUE's 872-sentence dev set). Option val_rows=N: the last N lines of "
        "train.tsv are val instead (select there, score on test)",
    )
)

# -- AG News ----------------------------------------------------------------------------
# Zhang, Zhao and LeCun 2015 (char-CNN release): train.csv / test.csv with quoted rows
# "class index (1-4)","title","description"; the text is title and description joined by a space, as
# torchtext builds it. MD5s as torchtext publishes them. There is no official val split. Local layouts,
# each read as it is without a download:
#   - train.csv / test.csv (canonical), or train.tsv / test.tsv (`text<TAB>class name`, no header);
#     val, if wanted, is dev.tsv in the TSV layout;
#   - dev.tsv alone (a held-out copy such as shared/data's: 10,001 rows drawn from the official train
#     set). With no train file to train on, dev.tsv is split by line number, a rule anyone can redo with
#     awk: lines ending in 9 are val, lines ending in 0 are test, the rest train (10,001 lines: 8,001 /
#     1,000 / 1,000). Its test split is therefore not the official test set.
AGNEWS_BASE_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv"
AGNEWS_MD5 = {"train.csv": "b1a00f826fdfbd249f79597b59e1dc12", "test.csv": "d52ea96a97a2d943681189a97654912d"}
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
AGNEWS_TSV = {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"}
AGNEWS_CSV = {"train": "train.csv", "test": "test.csv"}
AGNEWS_DEV_ONLY = {"val": 9, "test": 0}
"""dev.tsv alone: the last digit of the line numbers of each held-out split; the other lines are train."""


def _agnews_dev_split(line_number: int) -> str:
    return next((split for split, digit in AGNEWS_DEV_ONLY.items() if line_number % 10 == digit), "train")


def load_agnews(directory: Path, split: str) -> TextClassification:
    texts, labels, selection = [], [], ""
    csv_path = directory / AGNEWS_CSV.get(split, "-")
    tsv_path = directory / AGNEWS_TSV[split]
    dev_path = directory / AGNEWS_TSV["val"]
    dev_only = dev_path.exists() and not any(
        (directory / files["train"]).exists() for files in (AGNEWS_CSV, AGNEWS_TSV)
    )
    if csv_path.exists():
        path = csv_path
        for line_number, row in read_csv(path):
            if len(row) != 3:
                raise DataError(
                    f"{path}, line {line_number}: expected 3 fields (class index, title, description), found {len(row)}"
                )
            if row[0].strip() not in ("1", "2", "3", "4"):
                raise DataError(f"{path}, line {line_number}: class index {row[0]!r} is out of range; allowed 1..4")
            labels.append(int(row[0]) - 1)
            texts.append(f"{row[1].strip()} {row[2].strip()}".strip())
    elif tsv_path.exists() or dev_only:
        path = dev_path if dev_only else tsv_path
        for line_number, (text, name) in read_tsv(path, columns=2):
            label = parse_label(name.strip(), AGNEWS_LABELS, f"{path}, line {line_number}")  # every line checked
            if not dev_only or _agnews_dev_split(line_number) == split:
                labels.append(label)
                texts.append(text.strip())
        if dev_only:
            selection = (
                f"lines ending in {AGNEWS_DEV_ONLY[split]}"
                if split in AGNEWS_DEV_ONLY
                else f"lines not ending in {' or '.join(map(str, AGNEWS_DEV_ONLY.values()))}"
            )
    else:
        where = f"{csv_path.name} (canonical CSV) or {tsv_path.name}" if split in AGNEWS_CSV else tsv_path.name
        raise FileNotFoundError(f"dataset agnews: split {split!r} needs {where} in {directory}")
    _non_empty(path, len(texts))
    return TextClassification(texts, labels, AGNEWS_LABELS, path, selection)


def make_agnews_fixture(directory: Path) -> None:
    examples = [
        (1, "Talks resume", "Diplomats met in Geneva on Monday to restart negotiations."),
        (2, "Late winner", "A stoppage-time goal sent the home side into the final."),
        (3, "Shares climb", 'Stocks rose after the "surprise" earnings report, analysts said.'),
        (4, "New chip", "The company unveiled a faster, cooler processor for laptops."),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    for name in AGNEWS_CSV.values():
        with open(directory / name, "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(examples)
    lines = [f"{title} {body}\t{AGNEWS_LABELS[index - 1]}" for index, title, body in examples]
    (directory / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


register_dataset(
    DatasetSpec(
        name="agnews",
        domain="text",
        task="classification",
        load=load_agnews,
        make_fixture=make_agnews_fixture,
        folder="agnews",
        files=tuple(
            RemoteFile(path=file, url=f"{AGNEWS_BASE_URL}/{file}", md5=AGNEWS_MD5[file], split=split)
            for split, file in AGNEWS_CSV.items()
        ),
        local_layouts=((AGNEWS_TSV["train"], AGNEWS_TSV["test"]), (AGNEWS_TSV["val"],)),
        splits=("train", "val", "test"),
        num_classes=4,
        licence="research use (AG's corpus of news articles)",
        description="AG News topic classification: World, Sports, Business, Sci/Tech; train.csv/test.csv (or .tsv), "
        "val dev.tsv; dev.tsv alone is split by line number (ends in 9: val, 0: test, else train)",
    )
)

# -- your own files ---------------------------------------------------------------------
# root is a folder holding {split}.csv / .tsv / .jsonl (val may also be dev.*), or a single file, which is
# the train split. CSV/TSV files have a header row naming the columns.
FORMATS = {"csv": (".csv", ".tsv"), "jsonl": (".jsonl", ".json")}


def _user_file(root: Path, split: str, form: str) -> Path:
    suffixes = FORMATS[form]
    if root.is_file():
        if split != "train":
            raise FileNotFoundError(
                f"{root} is a single file, which is the train split; for split {split!r} point root at a folder "
                f"holding train{suffixes[0]} and {split}{suffixes[0]}"
            )
        return root
    stems = ("val", "dev") if split == "val" else (split,)
    for stem in stems:
        for suffix in suffixes:
            if (root / f"{stem}{suffix}").exists():
                return root / f"{stem}{suffix}"
    raise FileNotFoundError(
        f"no {split} file in {root}: expected one of {', '.join(s + x for s in stems for x in suffixes)}"
    )


def _records(path: Path, form: str) -> Iterator[tuple[int, dict]]:
    if form == "jsonl":
        yield from read_jsonl(path)
        return
    rows = read_csv(path, delimiter="\t" if path.suffix == ".tsv" else ",")
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError(f"{path}: the file is empty; expected a header row naming the columns") from None
    for line_number, row in rows:
        yield line_number, dict(zip(header, row))


def _column(record: dict, column: str, path: Path, line_number: int) -> Any:
    if column not in record:
        raise DataError(f"{path}, line {line_number}: no column {column!r}; columns are {', '.join(map(str, record))}")
    return record[column]


def _text(record: dict, column: str, path: Path, line_number: int) -> str:
    value = _column(record, column, path, line_number)
    if not isinstance(value, str):
        raise DataError(f"{path}, line {line_number}: column {column!r} must be text, found {type(value).__name__}")
    return value


def _classification_loader(form: str):
    def load(
        root: Path,
        split: str,
        text_column: str = "text",
        label_column: str = "label",
        labels: Sequence[str] | None = None,
        num_classes: int | None = None,
    ) -> TextClassification:
        path = _user_file(Path(root), split, form)
        texts, targets = [], []
        for line_number, record in _records(path, form):
            texts.append(_text(record, text_column, path, line_number))
            value = _column(record, label_column, path, line_number)
            targets.append(parse_label(value, labels, f"{path}, line {line_number}", num_classes))
        _non_empty(path, len(texts))
        names = list(labels) if labels is not None else [str(i) for i in range(num_classes or max(targets) + 1)]
        return TextClassification(texts, targets, names, path)

    return load


def _generation_loader(form: str):
    def load(root: Path, split: str, source_column: str = "source", target_column: str = "target") -> TextPairs:
        path = _user_file(Path(root), split, form)
        sources, targets = [], []
        for line_number, record in _records(path, form):
            sources.append(_text(record, source_column, path, line_number))
            targets.append(_text(record, target_column, path, line_number))
        _non_empty(path, len(sources))
        return TextPairs(sources, targets, path)

    return load


CLASSIFICATION_FIXTURE = [
    ("a delight from start to finish", "1"),
    ("I want my two hours back", "0"),
    ("sharp, funny, humane", "1"),
    ("the plot makes no sense", "0"),
]
GENERATION_FIXTURE = [
    ("summarize: The meeting moved to Friday because the room was booked.", "Meeting moved to Friday."),
    ("summarize: Rain is expected all weekend, so the match is postponed.", "Match postponed for rain."),
    ("translate English to German: thank you", "danke"),
]


def _write_fixture(directory: Path, form: str, header: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if form == "jsonl":
            lines = [json.dumps(dict(zip(header, row))) for row in rows]
            (directory / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            with open(directory / f"{split}.csv", "w", encoding="utf-8", newline="") as handle:
                csv.writer(handle, lineterminator="\n").writerows([header, *rows])


for _form in FORMATS:
    register_dataset(
        DatasetSpec(
            name=f"text_{_form}",
            domain="text",
            task="classification",
            load=_classification_loader(_form),
            make_fixture=lambda d, f=_form: _write_fixture(d, f, ("text", "label"), CLASSIFICATION_FIXTURE),
            folder=None,
            description=f"your own text classification {_form.upper()} files (options text_column, label_column, "
            f"labels=[class names] or num_classes)",
        )
    )
    register_dataset(
        DatasetSpec(
            name=f"text2text_{_form}",
            domain="text",
            task="generation",
            load=_generation_loader(_form),
            make_fixture=lambda d, f=_form: _write_fixture(d, f, ("source", "target"), GENERATION_FIXTURE),
            folder=None,
            description=f"your own source/target text pairs for generation, {_form.upper()} files "
            f"(options source_column, target_column)",
        )
    )
