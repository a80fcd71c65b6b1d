"""A data file that is there but malformed is named with its line and nothing else; only data that is not
there gets the ways to get it (a download would not mend a bad row)."""

from __future__ import annotations

from pathlib import Path

import pytest

HINT = "To get the data:"


def write_sst2(root: Path, train: str) -> None:
    folder = root / "sst2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(train, encoding="utf-8")
    (folder / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n", encoding="utf-8")


def train(zoo, root: Path, *extra: str) -> tuple[int, str, str]:
    return zoo(
        "train", "text/sst2-bitfit", f"data.root={root}", "backbone.pretrained=false", "train.max_steps=1", *extra
    )


@pytest.mark.filterwarnings("ignore::zoo.catalog.download.ChecksumWarning")
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("sentence\tlabel\ngood film\t1\nbad film\t7\n", "train.tsv, line 3: label 7 is out of range; allowed 0..1"),
        ("text\tlabel\ngood film\t1\n", "train.tsv, line 1: expected the header 'sentence<TAB>label'"),
        ("sentence\tlabel\ngood film\t1\tspare\n", "train.tsv, line 2: expected 2 tab-separated fields, found 3"),
    ],
)
def test_malformed_file_that_exists_gets_no_download_hint(zoo, tmp_path, rows, expected):
    write_sst2(tmp_path / "data", rows)
    code, _, err = train(zoo, tmp_path / "data")
    assert code == 2
    assert expected in err and str(tmp_path / "data" / "sst2" / "train.tsv") in err
    assert HINT not in err and "download" not in err


def test_missing_file_keeps_the_hint(zoo, tmp_path):
    (tmp_path / "data").mkdir()
    code, _, err = train(zoo, tmp_path / "data", "data.download=false")
    assert code == 2
    assert f"{tmp_path / 'data' / 'sst2' / 'train.tsv'} is missing" in err
    assert HINT in err and "data.download=true" in err


def test_catalog_tells_missing_data_from_other_data_errors(tmp_path):
    from zoo.catalog.datasets import load_dataset
    from zoo.errors import DataError, MissingDataError

    with pytest.raises(MissingDataError, match="sst2/train.tsv is missing"):
        load_dataset("sst2", "train", tmp_path, allow_download=False)
    with pytest.raises(DataError) as error:
        load_dataset("sst2", "nosuchsplit", tmp_path, allow_download=False)
    assert not isinstance(error.value, MissingDataError)
