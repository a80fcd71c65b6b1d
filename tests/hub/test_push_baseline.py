"""``zoo push --baseline RUN``: the entry and the card compare the adapter with full fine-tuning of the same
backbone on the same data, by the tables' paired bootstrap over the common test rows."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def vision_runs(tmp_path_factory):
    import zoo

    out = tmp_path_factory.mktemp("baseline")
    lora = zoo.run("vision/medical-lora", ["scale=tiny", "train.max_steps=6"], out=out / "lora", log=None)
    full = zoo.run("vision/medical-full", ["scale=tiny", "train.max_steps=6"], out=out / "full", log=None)
    return lora, full


def accuracy(run_dir) -> float:
    """By hand from the run's test outputs: the share of rows whose most probable class is the target."""
    with np.load(run_dir / "predictions" / "test.npz") as data:
        return float((data["output"].argmax(1) == data["target"]).mean())


def test_the_difference_is_the_adapter_minus_the_baseline_on_the_same_rows(vision_runs, tmp_path, capsys):
    from zoo.cli.main import main

    lora, full = vision_runs
    hub = tmp_path / "hub"
    assert main(["push", str(lora.dir), "--hub", str(hub), "--baseline", str(full.dir)]) == 0
    assert "against full: accuracy" in capsys.readouterr().out
    entry = next(iter(json.loads((hub / "index.json").read_text())["adapters"].values()))["versions"]["1"]
    compared = entry["compared_with"]
    expected = accuracy(lora.dir) - accuracy(full.dir)
    assert compared["difference"] == pytest.approx(expected, abs=1e-6)
    assert compared["low"] <= compared["difference"] <= compared["high"] and compared["method"] == "full"
    separated = "better" if compared["low"] > 0 else "worse" if compared["high"] < 0 else "not separated"
    assert compared["verdict"] == separated
    assert compared["rows"] == len(np.load(lora.dir / "predictions" / "test.npz")["target"])
    card = (hub / entry["path"] / "README.md").read_text()
    assert f"a difference of {compared['difference']:+.4f}" in card and "same backbone on the same data" in card


def test_a_baseline_of_another_backbone_or_dataset_is_refused(vision_runs, tiny_run, tmp_path):
    from zoo.errors import HubError
    from zoo.hub.push import push

    lora, _ = vision_runs
    with pytest.raises(HubError, match=r"another backbone, backbone weights, dataset, training rows, test rows"):
        push(lora.dir, tmp_path / "hub", baseline=tiny_run.dir, log=None)
    assert (
        not (tmp_path / "hub" / "index.json").exists() or "vision" not in (tmp_path / "hub" / "index.json").read_text()
    )
