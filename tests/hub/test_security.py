"""What a hub may not do: paths out of an entry's folder, unlisted or pickled files, wrong bases."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from zoo.errors import AdapterFileError, FingerprintMismatch, HubError
from zoo.hub.predict import load
from zoo.hub.pull import pull

NAME = "text/sst2-lora"
WEIGHTS = "adapter/adapter_model.safetensors"


def edit_entry(hub, change):
    index_path = hub / "index.json"
    index = json.loads(index_path.read_text())
    change(index["adapters"][NAME]["versions"]["1"])
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize(
    "bad", ["/etc/passwd.json", "../../outside.json", "adapter/../../x.json", "C:/x.json", "adapter\\..\\x.json"]
)
def test_an_entry_naming_a_path_outside_its_folder_is_refused(hub_copy, tmp_path, bad):
    (tmp_path / "outside.json").write_text("{}")
    edit_entry(hub_copy, lambda e: e["files"].append({"path": bad, "size": 2, "sha256": "0" * 64}))
    with pytest.raises(HubError, match="absolute|'\\.\\.'"):
        pull(NAME, hub_copy, log=None)
    assert not list((tmp_path / "cache").rglob("outside.json"))


def test_an_entry_path_that_climbs_out_is_refused(hub_copy):
    edit_entry(hub_copy, lambda e: e.update(path="../elsewhere"))
    with pytest.raises(HubError, match="'\\.\\.'"):
        pull(NAME, hub_copy, log=None)


def test_pickled_weights_are_never_fetched(hub_copy):
    def to_bin(entry):
        for item in entry["files"]:
            if item["path"] == WEIGHTS:
                item["path"] = "adapter/adapter_model.bin"

    edit_entry(hub_copy, to_bin)
    with pytest.raises(HubError, match="never pickles"):
        pull(NAME, hub_copy, log=None)


def test_a_file_not_listed_in_the_entry_is_not_loaded(pushed_hub):
    pulled = pull(NAME, pushed_hub, log=None)
    torch.save({"x": torch.zeros(1)}, pulled.dir / "adapter" / "adapter_model.bin")
    with pytest.raises(HubError, match="not among the files"):
        load(pulled.dir, log=None)


def test_an_adapter_for_other_base_weights_is_refused_naming_the_fingerprints(hub_copy):
    edit_entry(hub_copy, lambda e: e["backbone"].update(fingerprint="sha256:" + "ab" * 32))
    with pytest.raises(FingerprintMismatch, match="sha256:abab.*fingerprint sha256:"):
        load(NAME, hub=str(hub_copy), log=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = load(NAME, hub=str(hub_copy), force=True, log=None)
    assert any("--force" in str(w.message) for w in caught)
    assert len(predictor.predict(["fine"])) == 1


def test_a_mis_shaped_tensor_is_refused_naming_it_even_with_force(hub_copy):
    weights = hub_copy / NAME / "1" / WEIGHTS
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if "lora_A" in k)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    save_file(tensors, weights)

    def refresh(entry):
        for item in entry["files"]:
            if item["path"] == WEIGHTS:
                item.update(size=weights.stat().st_size, sha256=hashlib.sha256(weights.read_bytes()).hexdigest())

    edit_entry(hub_copy, refresh)
    with pytest.raises(AdapterFileError, match=name.split(".lora_A")[0].split(".")[-1]):
        load(NAME, hub=str(hub_copy), force=True, log=None)


def test_a_published_version_is_never_overwritten(tiny_run, hub_copy):
    from zoo.hub.push import push

    before = (hub_copy / "index.json").read_bytes()
    with pytest.raises(HubError, match="never overwritten"):
        push(tiny_run.dir, hub_copy, version="1", log=None)
    assert (hub_copy / "index.json").read_bytes() == before
    entry = push(tiny_run.dir, hub_copy, log=None)  # the next version is free
    assert entry["version"] == "2"
    index = json.loads((hub_copy / "index.json").read_text())
    assert list(index["adapters"][NAME]["versions"]) == ["1", "2"] and index["adapters"][NAME]["latest"] == "2"


def test_pushing_to_the_hugging_face_hub_without_credentials_is_a_clear_error(tiny_run, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from zoo.hub.push import push

    with pytest.raises(HubError, match="credentials"):
        push(tiny_run.dir, "hf://someone/adapters", log=None)


def test_a_newer_index_schema_is_refused(hub_copy):
    index = json.loads((hub_copy / "index.json").read_text())
    index["schema_version"] = 99
    (hub_copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(HubError, match="upgrade zoo"):
        pull(NAME, hub_copy, log=None)


def test_loading_a_hub_adapter_unpickles_nothing(pushed_hub, monkeypatch):
    pulled = pull(NAME, pushed_hub, log=None)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called while loading a hub adapter")

    monkeypatch.setattr(torch, "load", refuse)
    assert len(load(pulled.dir, log=None).predict(["fine"])) == 1


def test_no_remote_code_is_trusted():
    from pathlib import Path

    import zoo

    root = Path(zoo.__file__).parent
    assert not [p for p in root.rglob("*.py") if "trust_remote_code=True" in p.read_text()]
