"""Files and folders zoo writes get the modes the umask gives any new file, so that a results folder
shared with others is as readable as the user's umask says (0644/0755 under 022), and no more (0600/0700
under 077)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from zoo.files import atomic_directory, atomic_write_text

MODES = [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]
IDS = ["umask-022", "umask-077", "umask-002"]


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def modes_under(root: Path) -> dict[str, int]:
    """``{relative path: permission bits}`` of everything under ``root``, ``root`` itself as ``.``."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def expected_modes(root: Path, file_mode: int, folder_mode: int) -> dict[str, int]:
    found = {".": folder_mode}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = folder_mode if path.is_dir() else file_mode
    return found


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), MODES, ids=IDS)
def test_a_run_its_store_and_its_tables_get_the_umask_modes(zoo, tmp_path, mask, file_mode, folder_mode):
    shared = tmp_path / "shared"
    with umask(mask):
        code, _, err = zoo("train", "text/sst2-bitfit", "scale=tiny", "train.max_steps=2", "--out", shared / "run")
        assert code == 0, err
        assert zoo("results", "add", shared / "run", "--out", shared)[0] == 0
        code, _, err = zoo("results", "table", "cross-domain", "--scale", "tiny", "--out", shared, "--no-plots")
        assert code == 0, err
    found = modes_under(shared)
    for written in ("run/config.yaml", "run/run.json", "run/README.md", "run/adapter", "run/checkpoints/last.pt"):
        assert written in found  # the files the check is about are there
    assert "run/adapter/adapter_model.safetensors" in found and "cross-domain/tiny/cross-domain.md" in found
    assert {k: oct(v) for k, v in found.items()} == {
        k: oct(v) for k, v in expected_modes(shared, file_mode, folder_mode).items()
    }


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), MODES, ids=IDS)
def test_replacing_files_adapters_and_folders_keeps_the_umask_modes(tmp_path, bert, mask, file_mode, folder_mode):
    import zoo.peft as zp

    model = zp.apply(bert, "lora", r=2)
    with umask(mask):
        for _ in range(2):  # the second time replaces what the first wrote
            atomic_write_text(tmp_path / "out" / "note.txt", "hello\n")
            zp.save_adapter(model, tmp_path / "out" / "adapter")
            with atomic_directory(tmp_path / "out" / "folder") as staging:
                (staging / "inside.txt").write_text("x")
    found = modes_under(tmp_path / "out")
    assert {k: oct(v) for k, v in found.items()} == {
        k: oct(v) for k, v in expected_modes(tmp_path / "out", file_mode, folder_mode).items()
    }
    assert sorted(found) == [
        ".",
        "adapter",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "folder",
        "folder/inside.txt",
        "note.txt",
    ]  # nothing temporary left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from zoo.files import atomic_file

    atomic_write_text(tmp_path / "note.txt", "old\n")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "note.txt", "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "folder") as staging:
        (staging / "inside.txt").write_text("x")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt"]
    assert (tmp_path / "note.txt").read_text() == "old\n"
