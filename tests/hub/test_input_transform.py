"""A run trained on a window of each sequence (``flip_gb1`` with ``data.options.residues=1-56``) sees the
same window wherever its model is used: zoo predict on whole sequences and FASTA files, zoo eval, and a
copy pushed to a hub and pulled back (over HTTP from 127.0.0.1). The references are the model fed windows
cut by hand (``sequence[:56]``) and metrics computed here from its outputs, never zoo's transform itself.
A hub entry that names an unknown transform or parameters the transform does not take is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr

from zoo.cli.main import main
from zoo.errors import DataError, HubError
from zoo.hub.predict import load
from zoo.hub.pull import pull

NAME = "protein/flip_gb1-lora"
WINDOW = 56
SHORT = "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDD"  # 47 residues: the window's end is past it


@pytest.fixture(scope="module")
def window_run(tmp_path_factory):
    """A tiny LoRA run on FLIP GB1 residues 1-56 (its fixture's sequences are 80 residues, GB1 and a partner)."""
    import zoo

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return zoo.run(
            "protein/gb1-lora",
            ["scale=tiny", "data.options.residues=1-56"],
            out=tmp_path_factory.mktemp("run") / "gb1-window",
            log=None,
        )


@pytest.fixture(scope="module")
def window_hub(window_run, tmp_path_factory):
    from zoo.hub.push import push

    root = tmp_path_factory.mktemp("hub") / "hub"
    push(window_run.dir, root, log=None)
    return root


@pytest.fixture
def hub_edit(window_hub, tmp_path):
    """A copy of the hub and a function that edits its one entry."""
    import shutil

    hub = shutil.copytree(window_hub, tmp_path / "hub")

    def edit(change):
        index = json.loads((hub / "index.json").read_text())
        change(index["adapters"][NAME]["versions"]["1"])
        (hub / "index.json").write_text(json.dumps(index))
        return hub

    return edit


def whole_sequences(run) -> list[tuple[str, float]]:
    """(sequence, target) of the test split the run read, as FLIP publishes it (whole sequences), read here
    with the csv module rather than zoo's loader."""
    import csv
    import io
    import zipfile

    archive = Path(json.loads((run.dir / "run.json").read_text())["data"]["directory"]) / "splits.zip"
    rows = csv.DictReader(io.StringIO(zipfile.ZipFile(archive).read("splits/three_vs_rest.csv").decode()))
    return [(row["sequence"], float(row["target"])) for row in rows if row["set"] == "test"]


def by_hand(run, sequences: list[str]) -> list[float]:
    """The run's model fed windows cut here, in one batch."""
    import zoo

    built = zoo.load_run(run.dir).build()
    with torch.no_grad():
        return built.model(built.model.backbone.collate([s[:WINDOW] for s in sequences])).reshape(-1).tolist()


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def predict_values(capsys, model, *arguments) -> list[float]:
    code, out, err = run_cli(capsys, "predict", model, *arguments, "--format", "json")
    assert code == 0, err
    return [row["value"] for row in json.loads(out)]


def test_the_run_records_the_window_and_its_card_states_it(window_run):
    record = json.loads((window_run.dir / "run.json").read_text())
    assert record["input_transform"]["name"] == "residue_window"
    assert record["input_transform"]["parameters"] == {"residues": "1-56"}
    assert "inputs are cut to residues 1-56 before the model sees them" in (window_run.dir / "README.md").read_text()
    # the reference inputs are whole sequences, as a user gives them; the model saw their windows
    inputs = record["reference"]["inputs"]
    assert inputs and all(len(sequence) == 80 for sequence in inputs)
    recorded = [value for (value,) in record["reference"]["outputs"]]
    assert recorded == pytest.approx(by_hand(window_run, inputs), abs=1e-6)


def test_predict_on_whole_sequences_and_fasta_equals_the_model_on_windows_cut_by_hand(window_run, capsys, tmp_path):
    sequences = [row[0] for row in whole_sequences(window_run)]
    assert all(len(s) > WINDOW for s in sequences) and len({s[WINDOW:] for s in sequences}) == 1
    expected = by_hand(window_run, sequences)
    assert predict_values(capsys, window_run.dir, *sequences) == expected  # exactly: the same model on the same windows
    fasta = tmp_path / "gb1.fasta"
    fasta.write_text("".join(f">variant{i} some description\n{s[:40]}\n{s[40:]}\n" for i, s in enumerate(sequences)))
    assert predict_values(capsys, window_run.dir, fasta) == expected
    # a window given by hand is too short for the model's window (it is cut from whole sequences)
    code, _, err = run_cli(capsys, "predict", window_run.dir, sequences[0][: WINDOW - 1])
    assert code == 2 and "55 residues" in err and "residues 1-56" in err and "at least 56" in err


def test_short_inputs_are_one_clear_error_naming_them(window_run, capsys, tmp_path):
    fasta = tmp_path / "short.fasta"
    fasta.write_text(f">fine\n{'A' * 80}\n>tiny fragment\n{SHORT}\n")
    code, out, err = run_cli(capsys, "predict", window_run.dir, fasta)
    assert code == 2 and out == ""
    assert f"{fasta}:tiny: 47 residues" in err and "residue_window" in err and len(err.strip().splitlines()) == 1
    predictor = load(window_run.dir, log=None)
    with pytest.raises(DataError, match=r"input 2: 47 residues, but inputs are cut to residues 1-56"):
        predictor.predict(["A" * 80, SHORT])
    with pytest.raises(DataError, match=r"input 1: 47 residues"):
        predictor.outputs([SHORT])


def test_zoo_eval_applies_the_window(window_run, capsys):
    rows = whole_sequences(window_run)
    outputs = by_hand(window_run, [sequence for sequence, _ in rows])
    targets = [target for _, target in rows]
    code, out, err = run_cli(capsys, "eval", window_run.dir, "--split", "test")
    assert code == 0, err
    measured = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()[1:]}
    assert measured["spearman"] == pytest.approx(spearmanr(outputs, targets).statistic, abs=1e-4)
    assert measured["mse"] == pytest.approx(sum((o - t) ** 2 for o, t in zip(outputs, targets)) / len(rows), abs=1e-4)


def test_a_pushed_and_pulled_adapter_keeps_the_window(window_run, window_hub, serve, capsys, tmp_path):
    entry = json.loads((window_hub / "index.json").read_text())["adapters"][NAME]["versions"]["1"]
    assert entry["input_transform"] == {"name": "residue_window", "parameters": {"residues": "1-56"}}
    card = (window_hub / NAME / "1" / "README.md").read_text()
    assert "inputs are cut to residues 1-56 before the model sees them" in card
    server = serve(window_hub)
    sequences = [row[0] for row in whole_sequences(window_run)]
    assert predict_values(capsys, NAME, *sequences, "--hub", server.url) == by_hand(window_run, sequences)
    predictor = load(NAME, hub=server.url, log=None)
    assert predictor.input_transform is not None and predictor.input_transform.parameters == {"residues": "1-56"}
    from zoo.hub.reference import check_reference_predictions

    assert check_reference_predictions(predictor, entry) == len(entry["reference_predictions"])
    code, _, err = run_cli(capsys, "predict", NAME, SHORT, "--hub", server.url)
    assert code == 2 and "47 residues" in err
    code, out, err = run_cli(capsys, "eval", NAME, "--hub", server.url, "--split", "test")
    assert code == 0, err
    rows = whole_sequences(window_run)
    outputs = by_hand(window_run, [sequence for sequence, _ in rows])
    mse = sum((o - t) ** 2 for o, (_, t) in zip(outputs, rows)) / len(rows)
    assert float(next(line for line in out.splitlines() if "mse" in line).split()[-1]) == pytest.approx(mse, abs=1e-4)


def test_an_entry_from_before_transforms_were_recorded_still_gets_its_configurations_window(window_run, hub_edit):
    hub = hub_edit(lambda entry: entry.pop("input_transform"))
    predictor = load(NAME, hub=str(hub), log=None)
    sequences = [row[0] for row in whole_sequences(window_run)]
    assert [p["value"] for p in predictor.predict(sequences)] == pytest.approx(by_hand(window_run, sequences), abs=1e-6)


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ({"name": "shell", "parameters": {"command": "rm -rf ~"}}, r"unknown input transform 'shell'.*residue_window"),
        ({"name": "zoo_domains.protein.transforms.cut_window", "parameters": {}}, "unknown input transform"),
        ({"name": "residue_window", "parameters": {"residues": "56-1"}}, "expected FIRST-LAST"),
        ({"name": "residue_window", "parameters": {"residues": "1-56", "code": "x"}}, "unknown parameter 'code'"),
        ({"name": "residue_window", "parameters": {"residues": 56}}, "must be a string FIRST-LAST"),
        ({"name": "residue_window", "parameters": {}}, "needs residues=FIRST-LAST"),
        ({"name": "residue_window", "parameters": {"residues": "1-40"}}, "config.yaml's data options ask for is"),
    ],
)
def test_an_entry_naming_an_unknown_transform_or_bad_parameters_is_refused(hub_edit, transform, message):
    hub = hub_edit(lambda entry: entry.update(input_transform=transform))
    with pytest.raises(HubError, match=message):
        pull(NAME, hub, log=None)
    assert not list((hub.parent / "cache").rglob("adapter_model.safetensors"))  # nothing of it was kept


@pytest.mark.parametrize("parameters", [["1-56"], {"residues": {"first": 1}}, {"residues": None}])
def test_parameters_that_are_not_scalars_are_refused_by_the_schema(hub_edit, parameters):
    hub = hub_edit(lambda entry: entry.update(input_transform={"name": "residue_window", "parameters": parameters}))
    with pytest.raises(HubError, match="input_transform"):
        pull(NAME, hub, log=None)
