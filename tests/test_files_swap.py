"""zoo.files' renames of what was staged across processes: a folder swapped over a full one, a finished
part file moved into place."""

from __future__ import annotations

import os

import pytest

from zoo.files import move_into_place, swap_directory


def test_a_folder_is_swapped_over_a_full_one_and_nothing_else_is_left(tmp_path):
    target, staging = tmp_path / "adapter", tmp_path / "adapter.partial"
    target.mkdir()
    (target / "old.json").write_text("old")
    staging.mkdir()
    (staging / "new.json").write_text("new")
    swap_directory(staging, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in target.iterdir()) == ["new.json"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target, staging = tmp_path / "adapter", tmp_path / "adapter.partial"
    target.mkdir()
    (target / "old.json").write_text("old")
    staging.mkdir()
    real = os.replace

    def fail_on_the_swap(source, destination):
        if str(source) == str(staging):
            raise OSError("disk gone")
        real(source, destination)

    monkeypatch.setattr("zoo.files.os.replace", fail_on_the_swap)
    with pytest.raises(OSError, match="disk gone"):
        swap_directory(staging, target)
    assert (target / "old.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "adapter.partial"]


def test_a_finished_part_is_moved_into_place(tmp_path):
    part, destination = tmp_path / "weights.part", tmp_path / "weights"
    destination.write_bytes(b"old")
    part.write_bytes(b"new")
    move_into_place(part, destination)
    assert destination.read_bytes() == b"new" and not part.exists()
