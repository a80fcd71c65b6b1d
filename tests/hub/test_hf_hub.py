"""A zoo hub on the Hugging Face Hub, with huggingface_hub's HfApi replaced by an in-memory repository
(no network): a push is one commit of the files and the index on top of the commit the index was read
at; a concurrent push is not lost; a pull fetches the files of the commit it read the index at and
verifies them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from zoo.errors import ConfigError, HubError, IntegrityError
from zoo.hub.index import INDEX_FILE
from zoo.hub.locations import DEFAULT_HUB, parse_hub
from zoo.hub.pull import pull

HUB = "hf://someone/adapters"
NAME = "text/sst2-lora"
OTHER = "text/agnews-lora"
THIRD = "text/sst2-ia3"
SHIPPED = json.loads((DEFAULT_HUB / INDEX_FILE).read_text())


def shipped_entry(name: str) -> dict:
    record = SHIPPED["adapters"][name]
    return json.loads(json.dumps(record["versions"][record["latest"]]))


def index_of(*entries: dict) -> dict:
    index = {"schema_version": SHIPPED["schema_version"], "adapters": {}}
    for entry in entries:
        index["adapters"][entry["name"]] = {"latest": entry["version"], "versions": {entry["version"]: entry}}
    return index


def contents_of(entry: dict) -> dict[str, bytes]:
    return {item["path"]: (DEFAULT_HUB / entry["path"] / item["path"]).read_bytes() for item in entry["files"]}


class Repository:
    """One model repository: commits (sha -> {path: bytes}), the head of main, and every call made."""

    def __init__(self, files: dict[str, bytes], downloads: Path) -> None:
        self.trees: dict[str, dict[str, bytes]] = {}
        self.head = self._add(files)
        self.downloads = downloads
        self.commits: list[dict] = []  # the keyword arguments of every create_commit
        self.fetched: list[tuple[str, str | None]] = []  # (filename, revision) of every hf_hub_download
        self.before_commit = None  # called before a commit is applied: another push landing meanwhile

    def _add(self, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode())
        sha.update(str(len(self.trees)).encode())
        self.trees[sha.hexdigest()] = dict(files)
        return sha.hexdigest()

    def land(self, changes: dict[str, bytes]) -> None:
        self.head = self._add({**self.trees[self.head], **changes})

    def index(self, sha: str | None = None) -> dict:
        return json.loads(self.trees[sha or self.head][INDEX_FILE])


class FakeApi:
    def __init__(self, repository: Repository, token: str | None) -> None:
        self.repository = repository
        self.token = token

    def create_repo(self, repo_id, exist_ok=False, **kwargs):
        assert repo_id == "someone/adapters" and exist_ok

    def repo_info(self, repo_id, revision=None, **kwargs):
        assert revision in (None, "main")
        return SimpleNamespace(sha=self.repository.head)

    def hf_hub_download(self, repo_id, filename, revision=None, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError

        repository = self.repository
        repository.fetched.append((filename, revision))
        tree = repository.trees[revision if revision in repository.trees else repository.head]
        if filename not in tree:
            raise EntryNotFoundError(f"404: {filename} not in {repo_id}@{revision}")
        path = repository.downloads / (revision or "main") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tree[filename])
        return str(path)

    def create_commit(self, repo_id, operations, commit_message, revision=None, parent_commit=None, **kwargs):
        from huggingface_hub.errors import HfHubHTTPError

        repository = self.repository
        assert self.token == "hf_test_token"
        repository.commits.append(dict(operations=operations, parent_commit=parent_commit, revision=revision))
        if repository.before_commit is not None:
            repository.before_commit()
            repository.before_commit = None
        if parent_commit != repository.head:
            response = requests.Response()
            response.status_code = 412
            raise HfHubHTTPError("412 Precondition Failed: a commit has happened since", response=response)
        repository.land({op.path_in_repo: op.path_or_fileobj for op in operations})


@pytest.fixture
def repository(tmp_path, monkeypatch):
    import huggingface_hub

    repo = Repository({INDEX_FILE: json.dumps(index_of(shipped_entry(OTHER))).encode()}, tmp_path / "downloads")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: FakeApi(repo, token))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return repo


def describing(entry: dict, calls: list):
    def describe(index):
        calls.append(json.loads(json.dumps(index)))
        return entry, contents_of(entry)

    return describe


def test_a_push_is_one_commit_of_the_files_and_the_index_on_the_commit_read(repository):
    entry, calls = shipped_entry(NAME), []
    read_at = repository.head
    assert parse_hub(HUB).publish(describing(entry, calls), log=lambda _m: None) == entry
    assert [set(index["adapters"]) for index in calls] == [{OTHER}]  # described against the index as it was
    [commit] = repository.commits
    assert commit["parent_commit"] == read_at and commit["revision"] is None
    written = {op.path_in_repo: op.path_or_fileobj for op in commit["operations"]}
    assert set(written) == {f"{entry['path']}/{item['path']}" for item in entry["files"]} | {INDEX_FILE}
    for item in entry["files"]:
        assert hashlib.sha256(written[f"{entry['path']}/{item['path']}"]).hexdigest() == item["sha256"]
    published = json.loads(written[INDEX_FILE])
    assert set(published["adapters"]) == {OTHER, NAME}
    assert published["adapters"][NAME]["versions"][entry["version"]] == entry
    assert repository.index() == published  # the head of the repository now


def test_a_push_that_loses_the_race_reads_the_index_again_and_keeps_the_other_entry(repository):
    entry, calls, messages = shipped_entry(NAME), [], []
    other_push = shipped_entry(THIRD)
    first_read, landed = repository.head, []

    def another_push_lands():
        repository.land({INDEX_FILE: json.dumps(index_of(shipped_entry(OTHER), other_push)).encode()})
        landed.append(repository.head)

    repository.before_commit = another_push_lands
    parse_hub(HUB).publish(describing(entry, calls), log=messages.append)
    assert len(calls) == 1  # the entry is not described again
    assert [c["parent_commit"] for c in repository.commits] == [first_read, *landed]
    assert set(repository.index()["adapters"]) == {OTHER, THIRD, NAME}
    assert any("changed while" in m and "reading its index again" in m for m in messages)


def test_a_version_published_meanwhile_by_another_push_is_a_clear_error(repository):
    entry = shipped_entry(NAME)
    repository.before_commit = lambda: repository.land(
        {INDEX_FILE: json.dumps(index_of(shipped_entry(OTHER), shipped_entry(NAME))).encode()}
    )
    before = repository.head
    with pytest.raises(HubError, match=rf"{NAME}@{entry['version']} was published .* by another push meanwhile"):
        parse_hub(HUB).publish(describing(entry, []), log=lambda _m: None)
    assert len(repository.commits) == 1 and repository.head != before  # only the other push landed
    assert repository.trees[repository.head].keys() == {INDEX_FILE}  # none of our files


def test_pushing_to_a_repository_without_an_index_starts_one(repository):
    repository.land({})
    repository.trees[repository.head].pop(INDEX_FILE)
    entry = shipped_entry(NAME)
    parse_hub(HUB).publish(describing(entry, []), log=lambda _m: None)
    assert set(repository.index()["adapters"]) == {NAME}


def test_a_pull_fetches_the_files_of_the_commit_its_index_was_read_at_verified(repository, isolated_cache):
    entry = shipped_entry(NAME)
    parse_hub(HUB).publish(describing(entry, []), log=lambda _m: None)
    read_at = repository.head
    pulled = pull(NAME, HUB, log=None)
    assert pulled.dir.is_relative_to(isolated_cache)
    for item in entry["files"]:
        assert hashlib.sha256((pulled.dir / item["path"]).read_bytes()).hexdigest() == item["sha256"]
    fetched = [revision for filename, revision in repository.fetched if filename.startswith(entry["path"])]
    assert fetched == [read_at] * len(entry["files"])


def test_a_file_that_differs_from_the_index_is_refused_and_not_kept(repository, isolated_cache):
    entry = shipped_entry(NAME)
    parse_hub(HUB).publish(describing(entry, []), log=lambda _m: None)
    weights = f"{entry['path']}/adapter/adapter_model.safetensors"
    damaged = bytearray(repository.trees[repository.head][weights])
    damaged[-1] ^= 0xFF
    repository.land({weights: bytes(damaged)})
    with pytest.raises(IntegrityError, match="sha256"):
        pull(NAME, HUB, log=None)
    assert not list(isolated_cache.rglob("adapter_model.safetensors"))


def test_an_http_hub_is_read_only(tmp_path):
    from zoo.hub.push import push

    with pytest.raises(ConfigError, match="an HTTP hub is read-only; zoo pushes to a folder or to hf://org/repo"):
        push(tmp_path, "http://127.0.0.1:9/hub", log=None)


def test_zoo_push_of_a_run_to_an_hf_hub_is_one_commit(tiny_run, repository):
    from zoo.hub.push import push

    read_at = repository.head
    entry = push(tiny_run.dir, HUB, log=None)
    [commit] = repository.commits
    assert commit["parent_commit"] == read_at
    written = {op.path_in_repo: op.path_or_fileobj for op in commit["operations"]}
    assert set(written) == {f"{entry['path']}/{item['path']}" for item in entry["files"]} | {INDEX_FILE}
    weights = f"{entry['path']}/adapter/adapter_model.safetensors"
    assert written[weights] == (tiny_run.dir / "adapter/adapter_model.safetensors").read_bytes()
    assert set(repository.index()["adapters"]) == {OTHER, entry["name"]}


def test_a_peft_adapter_is_pulled_from_its_repository_by_its_two_files(repository):
    config = {"peft_type": "LORA", "base_model_name_or_path": "bert-base-uncased", "r": 4}
    repository.land({"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": b"weights"})
    pulled = pull(HUB, log=None)
    assert pulled.entry == {"name": "someone/adapters", "version": "main", "peft": config}
    assert json.loads((pulled.adapter_dir / "adapter_config.json").read_text()) == config
    assert [name for name, _ in repository.fetched] == ["adapter_config.json", "adapter_model.safetensors"]


def test_without_network_an_hf_hub_is_served_from_the_cache_and_says_so(repository, monkeypatch):
    from huggingface_hub.errors import OfflineModeIsEnabled

    parse_hub(HUB).publish(describing(shipped_entry(NAME), []), log=lambda _m: None)
    first = pull(NAME, HUB, log=None)

    def no_network(*args, **kwargs):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    monkeypatch.setattr(FakeApi, "repo_info", no_network)
    monkeypatch.setattr(FakeApi, "hf_hub_download", no_network)
    messages = []
    assert pull(NAME, HUB, log=messages.append).dir == first.dir
    assert any(m.startswith("offline (") and "cached index" in m for m in messages)


def test_zoo_offline_without_a_cached_hf_hub_is_a_clear_error_and_asks_nothing(repository, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setattr(FakeApi, "repo_info", lambda *a, **k: pytest.fail("no request when ZOO_OFFLINE is set"))
    with pytest.raises(HubError, match=f"ZOO_OFFLINE is set and {HUB} has never been read on this machine"):
        pull(NAME, HUB, log=None)
