"""CLI tests run offline and in their own folders: fixtures go to a session cache, run
directories to each test's tmp_path, and no test reads the user's data or hub cache."""

from __future__ import annotations

import pytest

from zoo.cli.main import main


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("zoo-cache")))
        patch.setenv("ZOO_DATA_DIR", str(tmp_path_factory.mktemp("empty-data-root")))
        patch.setenv("HF_HUB_OFFLINE", "1")  # pretrained weights must fail fast, never download in a test
        patch.delenv("ZOO_RECIPES_DIR", raising=False)
        patch.delenv("ZOO_COMMAND", raising=False)
        yield


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run directories (runs/...) land here


@pytest.fixture
def zoo(capsys):
    """``zoo(*argv) -> (exit code, stdout, stderr)`` through the real entry point."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
