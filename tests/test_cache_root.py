"""One cache root: ZOO_CACHE_DIR moves the hub cache, downloaded datasets and fixtures together; without
it, the platform's cache folder for zoo (platformdirs)."""

from __future__ import annotations

import sys
from pathlib import Path

from platformdirs import user_cache_dir

from zoo.cache import cache_root


def cached_places() -> dict[str, Path]:
    from zoo.catalog.datasets import DATASETS, data_root
    from zoo.experiment.build import fixture_root
    from zoo.hub.locations import parse_hub

    spec = DATASETS.get("sst2")
    return {
        "hub": parse_hub("https://example.org/hub").cache_dir,
        "data": data_root(),
        "fixtures": fixture_root(spec),
    }


def test_zoo_cache_dir_moves_every_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    for root in (tmp_path / "one", tmp_path / "two"):
        monkeypatch.setenv("ZOO_CACHE_DIR", str(root))
        places = cached_places()
        assert {name: path.is_relative_to(root) for name, path in places.items()} == dict.fromkeys(places, True)
        assert places["data"] == root / "data" and places["fixtures"] == root / "fixtures" / "sst2"
        assert places["hub"].parent == root / "hub"


def test_without_zoo_cache_dir_the_platform_cache_folder_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_CACHE_DIR", raising=False)
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # platformdirs honours it on Linux
    assert cache_root() == Path(user_cache_dir("zoo", appauthor=False))
    if sys.platform.startswith("linux"):
        assert cache_root() == tmp_path / "xdg" / "zoo"
    from zoo.catalog.datasets import data_root

    assert data_root() == cache_root() / "data"


def test_zoo_data_dir_still_names_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))
    from zoo.catalog.datasets import data_root

    assert data_root() == tmp_path / "data"
    assert data_root(tmp_path / "given") == tmp_path / "given"
