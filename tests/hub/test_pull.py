"""Pulling over HTTP from 127.0.0.1: verified, resumed, locked, and served from the cache offline."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from zoo.errors import DownloadError, HubError, IntegrityError
from zoo.hub.pull import pull

NAME = "text/sst2-lora"
WEIGHTS = "adapter/adapter_model.safetensors"


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def staging_file(hub_url: str, relative: str, cache):
    from zoo.hub.locations import parse_hub

    return parse_hub(hub_url).cache_dir / "adapters" / NAME / "1.partial" / (relative + ".part")


def test_a_good_pull_gives_the_run_files_byte_for_byte(tiny_run, pushed_hub, serve, isolated_cache):
    server = serve(pushed_hub)
    pulled = pull(NAME, server.url, log=None)
    assert pulled.dir.is_relative_to(isolated_cache)
    for relative in ("adapter/adapter_config.json", WEIGHTS):  # the adapter as trained ...
        assert sha(pulled.dir / relative) == sha(tiny_run.dir / relative)
    for relative in ("config.yaml", "README.md"):  # ... its card and configuration as published
        assert sha(pulled.dir / relative) == sha(pushed_hub / NAME / "1" / relative)
    assert json.loads((pulled.dir / "entry.json").read_text())["version"] == "1"
    assert not list(pulled.dir.parent.glob("*.partial"))
    # a second pull is served from the cache, without fetching the files again
    fetched = server.count(WEIGHTS)
    assert pull(NAME, server.url, log=None).dir == pulled.dir
    assert server.count(WEIGHTS) == fetched == 1


def test_a_corrupt_file_is_refused_and_nothing_is_kept(hub_copy, serve, isolated_cache):
    weights = hub_copy / NAME / "1" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    weights.write_bytes(bytes(data))
    server = serve(hub_copy)
    with pytest.raises(IntegrityError, match="sha256"):
        pull(NAME, server.url, log=None)
    assert not (staging_file(server.url, WEIGHTS, isolated_cache)).exists()
    assert not any(p.name == "1" for p in isolated_cache.rglob("1"))  # no adapter folder in the cache


def test_a_file_larger_than_declared_is_refused(hub_copy, serve, isolated_cache):
    weights = hub_copy / NAME / "1" / WEIGHTS
    weights.write_bytes(weights.read_bytes() + b"\0" * 4096)
    server = serve(hub_copy)
    with pytest.raises(IntegrityError, match="more than"):
        pull(NAME, server.url, log=None)
    assert not staging_file(server.url, WEIGHTS, isolated_cache).exists()


def test_a_folder_hub_refuses_a_larger_file_too(hub_copy, isolated_cache):
    weights = hub_copy / NAME / "1" / WEIGHTS
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="larger than"):
        pull(NAME, hub_copy, log=None)


def test_an_interrupted_download_resumes_with_a_range_request(pushed_hub, serve, isolated_cache):
    server = serve(pushed_hub)
    source = pushed_hub / NAME / "1" / WEIGHTS
    part = staging_file(server.url, WEIGHTS, isolated_cache)
    part.parent.mkdir(parents=True)
    half = source.stat().st_size // 2
    part.write_bytes(source.read_bytes()[:half])  # what an earlier, killed pull left
    pulled = pull(NAME, server.url, log=None)
    assert sha(pulled.dir / WEIGHTS) == sha(source)
    assert (f"{NAME}/1/{WEIGHTS}", f"bytes={half}-") in server.requests


def test_a_connection_dropped_mid_file_is_resumed(pushed_hub, serve):
    server = serve(pushed_hub)
    source = pushed_hub / NAME / "1" / WEIGHTS
    server.drop_after[f"{NAME}/1/{WEIGHTS}"] = 9000  # more than one 8 KiB read: what was read is kept
    pulled = pull(NAME, server.url, log=None)
    assert sha(pulled.dir / WEIGHTS) == sha(source)
    ranges = [r for path, r in server.requests if path.endswith(WEIGHTS)]
    assert ranges == [None, "bytes=8192-"]


def test_a_server_that_keeps_dropping_leaves_a_resumable_partial_file(pushed_hub, serve, isolated_cache, monkeypatch):
    from zoo.catalog import download

    server = serve(pushed_hub)
    source = pushed_hub / NAME / "1" / WEIGHTS
    original = download.download_resumable

    def one_attempt(*args, **kwargs):
        return original(*args, **{**kwargs, "attempts": 1})

    server.drop_after[f"{NAME}/1/{WEIGHTS}"] = 9000
    with monkeypatch.context() as patch:
        patch.setattr(download, "download_resumable", one_attempt)
        with pytest.raises(DownloadError, match="resumes"):
            pull(NAME, server.url, log=None)
    assert staging_file(server.url, WEIGHTS, isolated_cache).stat().st_size == 8192
    pulled = pull(NAME, server.url, log=None)
    assert sha(pulled.dir / WEIGHTS) == sha(source)
    assert [r for p, r in server.requests if p.endswith(WEIGHTS)] == [None, "bytes=8192-"]


def test_two_concurrent_pulls_fetch_each_file_once(pushed_hub, serve):
    server = serve(pushed_hub)
    server.delay = 0.2  # so that the two pulls overlap
    results, errors = [], []

    def worker():
        try:
            results.append(pull(NAME, server.url, log=None))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert results[0].dir == results[1].dir
    assert server.count(WEIGHTS) == 1
    assert sha(results[0].dir / WEIGHTS) == sha(pushed_hub / NAME / "1" / WEIGHTS)


def test_offline_pulls_are_served_from_the_cache_and_say_so(pushed_hub, serve, monkeypatch):
    server = serve(pushed_hub)
    first = pull(NAME, server.url, log=None)
    server.stop()
    messages = []
    assert pull(NAME, server.url, log=messages.append).dir == first.dir  # the server is gone: no network
    assert any("offline" in m and "cache" in m for m in messages)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    messages.clear()
    assert pull(NAME, server.url, log=messages.append).dir == first.dir
    assert any("ZOO_OFFLINE" in m for m in messages)


def test_offline_without_a_cached_copy_is_a_clear_error(pushed_hub, serve, monkeypatch):
    server = serve(pushed_hub)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(HubError, match="ZOO_OFFLINE"):
        pull(NAME, server.url, log=None)
    assert server.requests == []


def test_an_unknown_name_suggests_close_ones(pushed_hub):
    with pytest.raises(HubError, match="did you mean text/sst2-lora"):
        pull("text/sst2-lorb", pushed_hub, log=None)
