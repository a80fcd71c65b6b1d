"""index.json and its entries read through one typed schema: what is missing or mistyped is named with the
hub, the entry and the field; version keys agree with their entries; reference predictions are exposed;
`zoo ls adapters` lists the hubs it can read and names the one it cannot."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil

import pytest

from zoo.cli.main import main
from zoo.errors import HubError
from zoo.hub.pull import pull

NAME = "text/sst2-lora"


def edit_entry(hub, change, version="1"):
    index = json.loads((hub / "index.json").read_text())
    change(index["adapters"][NAME]["versions"][version])
    (hub / "index.json").write_text(json.dumps(index))


def without(entry, dotted):
    *parents, last = dotted.split(".")
    for key in parents:
        entry = entry[key]
    del entry[last]


@pytest.mark.parametrize("field", ["task", "domain", "task.kind", "backbone.fingerprint", "method", "dataset.name"])
def test_an_entry_without_a_required_field_is_refused_naming_hub_entry_and_field(hub_copy, field):
    edit_entry(hub_copy, lambda entry: without(entry, field))
    with pytest.raises(HubError) as refused:
        pull(NAME, hub_copy, log=None)
    message = str(refused.value)
    assert str(hub_copy) in message and f"index entry {NAME}@1" in message
    assert f"field '{field}' is missing" in message


def test_a_mistyped_field_is_refused_with_its_value(hub_copy):
    edit_entry(hub_copy, lambda entry: entry["files"][0].update(size="1051"))
    with pytest.raises(HubError, match=r"index entry text/sst2-lora@1: field 'files\.0\.size'.*got '1051'"):
        pull(NAME, hub_copy, log=None)


def test_unknown_keys_are_ignored(hub_copy):
    edit_entry(hub_copy, lambda entry: entry.update(signed_by="a newer zoo", task={**entry["task"], "extra": 1}))
    pulled = pull(NAME, hub_copy, log=None)
    assert "signed_by" not in pulled.entry and "extra" not in pulled.entry["task"]


REFERENCES = [
    {
        "input": "a gripping film",
        "output": {"label": "positive", "index": 1, "scores": {"negative": 0.1, "positive": 0.9}},
    },
    {"input": {"sequence": "MKV"}, "output": {"value": 0.25}},
    {"input": "MKVL", "output": {"labels": ["H", "E", 2, "C"]}},
]


def test_reference_predictions_are_accepted_and_exposed(hub_copy):
    edit_entry(hub_copy, lambda entry: entry.update(reference_predictions=REFERENCES))
    pulled = pull(NAME, hub_copy, log=None)
    assert pulled.reference_predictions == REFERENCES
    assert pulled.entry["reference_predictions"] == REFERENCES
    assert json.loads((pulled.dir / "entry.json").read_text())["reference_predictions"] == REFERENCES


def test_an_entry_without_reference_predictions_exposes_none(hub_copy):
    edit_entry(hub_copy, lambda entry: entry.pop("reference_predictions", None))
    assert pull(NAME, hub_copy, log=None).reference_predictions == []


@pytest.mark.parametrize(
    ("references", "complaint"),
    [
        (REFERENCES * 11, "at most 32 items"),
        ([{"input": "x", "output": {"label": "a", "index": 0, "scores": {"a": "high"}}}], "scores.a"),
        ([{"input": "x", "output": {"value": 1.0, "label": "a"}}], "output.value.label"),
        ([{"input": "x"}], "reference_predictions.0.output' is missing"),
        ([{"input": None, "output": {"value": 1.0}}], "not null"),
    ],
)
def test_malformed_reference_predictions_are_refused(hub_copy, references, complaint):
    edit_entry(hub_copy, lambda entry: entry.update(reference_predictions=references))
    with pytest.raises(HubError, match=re.escape(complaint)):
        pull(NAME, hub_copy, log=None)


def add_version_2_that_says_1(hub):
    """versions["2"] with other files (its own README) whose entry says "version": "1"."""
    index = json.loads((hub / "index.json").read_text())
    record = index["adapters"][NAME]
    second = copy.deepcopy(record["versions"]["1"])
    shutil.copytree(hub / NAME / "1", hub / NAME / "2")
    readme = hub / NAME / "2" / "README.md"
    readme.write_text(readme.read_text() + "\nVersion 2.\n")
    for item in second["files"]:
        if item["path"] == "README.md":
            item.update(size=readme.stat().st_size, sha256=hashlib.sha256(readme.read_bytes()).hexdigest())
    second["path"] = f"{NAME}/2"  # but "version" stays "1"
    record["versions"]["2"] = second
    record["latest"] = "2"
    (hub / "index.json").write_text(json.dumps(index))


def test_a_version_key_that_disagrees_with_its_entry_is_refused_and_the_cache_kept(hub_copy, serve, monkeypatch):
    server = serve(hub_copy)
    first = pull(f"{NAME}@1", server.url, log=None)
    kept = {p.name: p.read_bytes() for p in first.dir.rglob("*") if p.is_file()}
    add_version_2_that_says_1(hub_copy)
    with pytest.raises(HubError, match="listed as version '2' but says \"version\": '1'"):
        pull(f"{NAME}@2", server.url, log=None)
    assert {p.name: p.read_bytes() for p in first.dir.rglob("*") if p.is_file()} == kept  # @1 untouched
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    again = pull(f"{NAME}@1", server.url, log=None)
    assert again.dir == first.dir and (again.dir / "README.md").read_bytes() == kept["README.md"]


def test_latest_must_be_one_of_the_versions(hub_copy):
    index = json.loads((hub_copy / "index.json").read_text())
    index["adapters"][NAME]["latest"] = "7"
    (hub_copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(HubError, match="'latest' is '7', which is not among its versions"):
        pull(NAME, hub_copy, log=None)


def test_what_zoo_push_writes_is_what_the_schema_reads(tiny_run, hub_copy):
    from zoo.hub.index import find_entry, parse_index
    from zoo.hub.push import push

    pushed = push(tiny_run.dir, hub_copy, log=None)
    entry = find_entry(parse_index((hub_copy / "index.json").read_bytes(), "hub"), f"{NAME}@2", "hub")
    assert {key: entry[key] for key in ("name", "version", "domain", "task", "path")} == {
        key: pushed[key] for key in ("name", "version", "domain", "task", "path")
    }


def test_ls_adapters_skips_a_broken_hub_and_lists_the_others(pushed_hub, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken-hub"
    broken.mkdir()
    (broken / "index.json").write_text('{"schema_version": 1, "adapters": {"text/x-lora": {"versions": {"1": {}}}}}')
    monkeypatch.setenv("ZOO_HUB", f"{broken},hf://not-a-repository,{pushed_hub}")
    assert main(["ls", "adapters"]) == 0
    out, err = capsys.readouterr()
    assert f"{NAME}@1" in out and str(pushed_hub) in out
    assert f"skipping hub {broken}" in err and "field 'name' is missing" in err
    assert "skipping hub hf://not-a-repository" in err
    assert str(broken) not in out
    # a hub named with --hub is the only one asked: its error is the answer
    assert main(["ls", "adapters", "--hub", str(broken)]) != 0
