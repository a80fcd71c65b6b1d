"""A local data file that differs from the canonical one is named once per process, however many splits
read it, while every load still learns that it differs (the model card and run.json say so)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zoo.catalog.download import ChecksumWarning, check_local_copy

# Run in a fresh process: warning filters and registries are the ones a user's `zoo` command has.
SCRIPT = """
import sys, warnings
from pathlib import Path
from zoo.catalog.datasets import load_noting_checksums
from zoo.catalog.download import check_local_copy

first, second = Path(sys.argv[1]), Path(sys.argv[2])
for split in ("train", "val", "test"):  # three splits carved out of one file, as SST-2's train.tsv is
    _, differing = load_noting_checksums(lambda: check_local_copy(first, "0" * 64, "dataset demo"))
    assert differing == {first}, differing
    with warnings.catch_warnings():  # as libraries do all the time; it resets Python's own once-registry
        warnings.simplefilter("ignore", DeprecationWarning)
check_local_copy(second, "0" * 64, "dataset demo")
check_local_copy(first, "0" * 64, "dataset demo")
print("done")
"""


def test_a_differing_local_copy_is_named_once_per_process(tmp_path):
    first, second = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    first.write_text("a subset\n")
    second.write_text("another file\n")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(first), str(second)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr
    named = [line for line in done.stderr.splitlines() if "ChecksumWarning" in line]
    assert len(named) == 2, done.stderr  # one line per file
    assert str(first) in named[0] and str(second) in named[1]


def test_code_that_catches_the_warning_still_gets_it_every_time(tmp_path):
    copy = tmp_path / "data.tsv"
    copy.write_text("rows\n")
    for _ in range(2):
        with pytest.warns(ChecksumWarning, match="not the canonical 000000000000") as caught:
            check_local_copy(copy, "0" * 64, "dataset demo")
        assert [w.message.path for w in caught] == [copy]
