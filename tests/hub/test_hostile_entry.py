"""A hostile hub entry runs nothing: backbone options are an allow-list, paths of the hub are never read,
and the adapter's weights are opened only after the base weights' fingerprint matched.

The hostile entry is a real pushed vision adapter whose ``config.yaml`` asks timm for
``checkpoint_path``: a file of the entry itself, a pickle that creates a marker file when unpickled.
timm before 1.0.26 unpickles such a file with ``weights_only=False``; the refusal here comes from zoo's
allow-list, before timm is called, so it holds whichever timm is installed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil

import pytest
import torch
import yaml

from zoo.errors import FingerprintMismatch, HubError
from zoo.hub.locations import parse_hub
from zoo.hub.predict import load
from zoo.hub.pull import ENTRY_FILE, pull

VISION = "vision/pneumoniamnist-lora"
TEXT = "text/sst2-lora"


class WritesMarker:
    """Unpickling this creates ``path``: what arbitrary code run by a pickle looks like."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="session")
def vision_hub(tmp_path_factory):
    """A hub folder with one tiny vision adapter, pushed by zoo push (copy it to change it)."""
    import zoo
    from zoo.hub.push import push

    run = zoo.run("vision/medical-lora", ["scale=tiny"], out=tmp_path_factory.mktemp("run") / "vision", log=None)
    root = tmp_path_factory.mktemp("vhub") / "hub"
    push(run.dir, root, log=None)
    return root


def describe(path):
    return {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def republish(hub, name, change_config, extra_files=(), rewrite=True):
    """Change the entry's config.yaml (and add files to it), with sizes and sha256 that verify
    (``rewrite=False``: the config.yaml as it is now)."""
    folder = hub / name / "1"
    config_path = folder / "config.yaml"
    if rewrite:
        config = yaml.safe_load(config_path.read_text())
        change_config(config)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    index = json.loads((hub / "index.json").read_text())
    entry = index["adapters"][name]["versions"]["1"]
    for item in entry["files"]:
        if item["path"] == "config.yaml":
            item.update(describe(config_path))
    for relative in extra_files:
        entry["files"].append({"path": relative, **describe(folder / relative)})
    (hub / "index.json").write_text(json.dumps(index))


@pytest.fixture
def torch_load_calls(monkeypatch):
    """Every torch.load call (passed through): a hostile entry must cause none."""
    calls, original = [], torch.load

    def spy(*args, **kwargs):
        calls.append(args[:1])
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def hostile_hub(vision_hub, tmp_path):
    """(hub folder, marker path): the entry's config.yaml points timm's checkpoint_path at its own pickle."""
    hub = shutil.copytree(vision_hub, tmp_path / "hostile")
    marker = tmp_path / "marker-written-by-the-pickle"
    (hub / VISION / "1" / "payload.md").write_bytes(pickle.dumps(WritesMarker(str(marker))))
    cached = parse_hub(hub).cache_dir / "adapters" / VISION / "1" / "payload.md"  # where a pull puts it

    def ask_timm_to_load_it(config):
        config["backbone"]["options"] = {"checkpoint_path": str(cached)}

    republish(hub, VISION, ask_timm_to_load_it, extra_files=["payload.md"])
    return hub, marker


REFUSAL = "option checkpoint_path is not allowed for backbone vit_ti16 from a hub; allowed: "


def test_a_hostile_checkpoint_path_is_refused_and_nothing_is_loaded(vision_hub, tmp_path, torch_load_calls):
    hub, marker = hostile_hub(vision_hub, tmp_path)
    with pytest.raises(HubError, match=re.escape(REFUSAL)) as refused:
        load(VISION, hub=str(hub), log=None)
    assert "img_size" in str(refused.value) and "checkpoint_path" not in str(refused.value).split("allowed: ")[1]
    assert not marker.exists()
    assert torch_load_calls == []
    # pulling alone is refused too, and nothing of the entry stays in the cache
    with pytest.raises(HubError, match=re.escape(REFUSAL)):
        pull(VISION, hub, log=None)
    assert not (parse_hub(hub).cache_dir / "adapters" / VISION).exists() or not any(
        (parse_hub(hub).cache_dir / "adapters" / VISION).iterdir()
    )
    assert not marker.exists()
    # the payload is what it claims to be: unpickled, it writes the marker
    pickle.loads((hub / VISION / "1" / "payload.md").read_bytes())
    assert marker.exists()


def test_an_adapter_folder_with_a_hostile_config_is_refused_when_loaded(vision_hub, tmp_path, torch_load_calls):
    """A folder already in the cache (an older zoo pulled it) is checked again when loaded."""
    clean = pull(VISION, vision_hub, log=None)
    folder = shutil.copytree(clean.dir, tmp_path / "pulled")
    marker = tmp_path / "marker"
    (folder / "payload.md").write_bytes(pickle.dumps(WritesMarker(str(marker))))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["backbone"]["options"] = {"checkpoint_path": str(folder / "payload.md"), "pretrained_cfg_overlay": {}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    entry = json.loads((folder / ENTRY_FILE).read_text())
    entry["files"].append({"path": "payload.md", **describe(folder / "payload.md")})
    (folder / ENTRY_FILE).write_text(json.dumps(entry))
    with pytest.raises(
        HubError, match="options checkpoint_path, pretrained_cfg_overlay are not allowed for backbone vit_ti16"
    ):
        load(folder, log=None)
    assert not marker.exists() and torch_load_calls == []


def test_an_allowed_option_still_loads(vision_hub, tmp_path):
    hub = shutil.copytree(vision_hub, tmp_path / "hub")
    republish(hub, VISION, lambda config: config["backbone"]["options"].update(drop_path_rate=0.0))
    predictor = load(VISION, hub=str(hub), log=None)
    assert len(predictor.predict([torch.rand(3, 28, 28)])) == 1


def test_no_backbone_lets_a_hub_set_an_option_that_names_a_file():
    from zoo.catalog.backbones import BACKBONES

    # drop_path_rate is stochastic depth, not a path
    risky = re.compile(r"(?<!drop_)path|file|url|checkpoint|cache|cfg|dir|pretrained|remote|token|hub|repo", re.I)
    declared = {name: BACKBONES.get(name).hub_options for name in BACKBONES.names()}
    assert declared["vit_b16"] and declared["minilm_l6"] == ("pooling", "max_length")
    assert {name: [o for o in options if risky.search(o)] for name, options in declared.items()} == {
        name: [] for name in declared
    }


def test_a_checkpoint_path_named_by_the_pulled_config_is_never_read(pushed_hub, tmp_path):
    """``backbone.pretrained`` in a pulled config.yaml names a file of the publisher's machine (or, hostile,
    any file here): the weights come from the user's own copy instead."""
    from zoo.hub.predict import choose_weights
    from zoo.hub.pulled_config import read_pulled_config

    pulled = pull(TEXT, pushed_hub, log=None)
    folder = shutil.copytree(pulled.dir, tmp_path / "pulled")
    planted = tmp_path / "planted.bin"
    planted.write_bytes(pickle.dumps(WritesMarker(str(tmp_path / "marker"))))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config.update(scale="default")
    config["backbone"]["pretrained"] = str(planted)
    config["data"]["root"] = str(tmp_path)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    entry = dict(pulled.entry, backbone={**pulled.entry["backbone"], "scale": "default"})
    checked = read_pulled_config(folder, entry, TEXT)
    assert checked.backbone.pretrained is True and checked.data.root is None
    weights, where = choose_weights(checked, None)
    assert weights is True or str(planted) not in str(weights)
    assert str(planted) not in where


def test_the_fingerprint_is_checked_before_the_adapter_weights_are_opened(pushed_hub, monkeypatch, tmp_path):
    import zoo.peft.io

    pulled = pull(TEXT, pushed_hub, log=None)
    folder = shutil.copytree(pulled.dir, tmp_path / "pulled")
    entry = json.loads((folder / ENTRY_FILE).read_text())
    entry["backbone"]["fingerprint"] = "sha256:" + "cd" * 32
    (folder / ENTRY_FILE).write_text(json.dumps(entry))
    opened = []
    monkeypatch.setattr(zoo.peft.io, "load_file", lambda *a, **k: opened.append(a) or {})
    monkeypatch.setattr(zoo.peft.io, "safe_open", lambda *a, **k: opened.append(a))
    with pytest.raises(FingerprintMismatch, match="sha256:cdcd"):
        load(folder, log=None)
    assert opened == []


@pytest.mark.parametrize(
    ("section", "options", "named"),
    [
        ("data", {"filename": "/etc/passwd.npz"}, "data.options.filename='/etc/passwd.npz'"),
        ("task", {"labels": ["ok", "../../x"]}, "task.options.labels[1]='../../x'"),
        ("backbone", {"pooling": "https://example.org/pool"}, "backbone.options.pooling='https://example.org/pool'"),
    ],
)
def test_options_of_a_pulled_config_may_not_name_a_path(pushed_hub, tmp_path, section, options, named):
    hub = shutil.copytree(pushed_hub, tmp_path / "hub")
    republish(hub, TEXT, lambda config: config[section].update(options=options))
    with pytest.raises(HubError, match=re.escape(f"{named} names a path or URL")):
        load(TEXT, hub=str(hub), log=None)


def test_a_config_with_yaml_aliases_is_refused_before_it_is_expanded(pushed_hub, tmp_path):
    hub = shutil.copytree(pushed_hub, tmp_path / "hub")
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(6)
    ]  # 10**7 strings once expanded (a hostile file nests a few more levels)

    def add_laughs(config):
        config["data"]["options"] = {"placeholder": 0}

    republish(hub, TEXT, add_laughs)
    config_path = hub / TEXT / "1" / "config.yaml"
    block = "".join(f"\n    {line}" for line in laughs)
    config_path.write_text(config_path.read_text().replace("\n    placeholder: 0", block))
    republish(hub, TEXT, lambda config: None, rewrite=False)
    with pytest.raises(HubError, match=r"uses YAML aliases"):
        load(TEXT, hub=str(hub), log=None)
