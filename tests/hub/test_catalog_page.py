"""`zoo ls adapters --format md|csv|json` and the model-zoo page `docs/zoo.md`: one row per adapter at its
latest version, with the values its index entry records (read here from the raw `index.json`), sizes
that are those of the files on disk, and a committed page that is what its own command writes."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from zoo.cli.main import main
from zoo.hub.catalog_page import human_size
from zoo.hub.index import add_entry, dump_index
from zoo.hub.locations import DEFAULT_HUB

ROOT = Path(__file__).resolve().parents[2]
KEYS = [
    "adapter",
    "domain",
    "backbone",
    "weights",
    "local_copy",
    "method",
    "trainable_parameters",
    "adapter_bytes",
    "adapter_size",
    "metric",
    "value",
    "interval_low",
    "interval_high",
    "measured_as",
    "dataset",
    "split",
    "examples",
    "try",
    "hub",
]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def zoo_hub(hub_copy):
    """The pushed hub plus: a second version of its adapter with val results only, a vision adapter whose
    weights' source holds a '|' and that records no local copy, and a protein adapter without a count of
    trainable parameters. Every entry lists the pushed adapter's files (the listing opens none of them)."""
    index = json.loads((hub_copy / "index.json").read_text())
    pushed = index["adapters"]["text/sst2-lora"]["versions"]["1"]
    second = copy.deepcopy(pushed)
    second.update(version="2", metrics={"val": pushed["metrics"]["val"]})
    vision = copy.deepcopy(pushed)
    vision.update(name="vision/xray-lora", domain="vision")
    vision["backbone"].update(name="vit_tiny", source="hf-hub:org/vit|tiny", local_copy=None)
    vision["method"]["trainable_parameters"] = 1234
    protein = copy.deepcopy(pushed)
    protein.update(name="protein/gb1-ia3", domain="protein")
    protein["method"].update(name="ia3", trainable_parameters=None)
    gb1 = "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"  # a sequence as its references hold
    protein["reference_predictions"] = [{"input": gb1, "output": {"value": 0.5}}]
    vision["reference_predictions"] = []
    for entry in (second, vision, protein):
        add_entry(index, entry)
    (hub_copy / "index.json").write_text(dump_index(index))
    return hub_copy


def expected_rows(hub: Path) -> dict[str, dict]:
    """From the raw index.json and the files on disk: each adapter's latest entry and what a row must say."""
    index = json.loads((hub / "index.json").read_text())
    expected = {}
    for name, record in index["adapters"].items():
        entry = record["versions"][record["latest"]]
        measured_as = "test" if "test" in entry["metrics"] else "val"
        measured = entry["metrics"][measured_as]
        adapter_folder = hub / entry["path"] / "adapter"
        expected[f"{name}@{record['latest']}"] = {
            "entry": entry,
            "trainable_parameters": entry["method"]["trainable_parameters"],
            "value": measured["metrics"][entry["task"]["main_metric"]],
            "measured_as": measured_as,
            "split": measured["split"],
            "examples": measured["examples"],
            "adapter_bytes": sum(path.stat().st_size for path in adapter_folder.iterdir()),
        }
    return expected


def test_the_committed_page_is_what_its_own_command_writes(capsys, monkeypatch):
    page = (ROOT / "docs" / "zoo.md").read_bytes()
    command = re.search(r"```bash\n(.*) > docs/zoo.md\n```", page.decode()).group(1)
    words = shlex.split(command)
    assert words[:3] == ["zoo", "ls", "adapters"] and "--page" in words
    monkeypatch.chdir(ROOT)  # the page says to run it from the repository root
    code, out, err = run_cli(capsys, *words[1:])
    assert code == 0, err
    assert out.encode() == page, "docs/zoo.md is out of date: run the command at its top to write it again"
    # and it is the default hub's page, with a row for every adapter the hub has
    assert words[words.index("--hub") + 1] == "zoo/hub/default" and (ROOT / "zoo/hub/default") == DEFAULT_HUB
    shipped = json.loads((DEFAULT_HUB / "index.json").read_text())["adapters"]
    assert [line.split("`")[1] for line in out.splitlines() if line.startswith("| `")] == [
        f"{name}@{record['latest']}" for name, record in sorted(shipped.items())
    ]


def test_csv_gives_each_adapter_at_its_latest_version_with_the_values_of_its_entry(zoo_hub, capsys):
    code, out, err = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--format", "csv")
    assert code == 0, err
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == KEYS
    rows = {row["adapter"]: row for row in reader}
    expected = expected_rows(zoo_hub)
    assert set(rows) == set(expected) == {"text/sst2-lora@2", "vision/xray-lora@1", "protein/gb1-ia3@1"}
    for label, want in expected.items():
        row, entry = rows[label], want["entry"]
        parameters = want["trainable_parameters"]
        assert row["trainable_parameters"] == ("" if parameters is None else str(parameters))
        assert float(row["value"]) == want["value"]
        assert (row["measured_as"], row["split"], int(row["examples"])) == (
            want["measured_as"],
            want["split"],
            want["examples"],
        )
        assert int(row["adapter_bytes"]) == want["adapter_bytes"]
        assert row["adapter_size"] == human_size(want["adapter_bytes"])
        assert (row["domain"], row["backbone"], row["method"]) == (
            entry["domain"],
            entry["backbone"]["name"],
            entry["method"]["name"],
        )
        assert row["weights"] == entry["backbone"]["source"]
        assert row["local_copy"] == (entry["backbone"].get("local_copy") or "")
        assert row["hub"] == str(zoo_hub)
    assert rows["text/sst2-lora@2"]["measured_as"] == "val"  # the newer version has no test results


def test_the_interval_of_the_measured_split_is_carried_to_every_format(zoo_hub, capsys):
    index = json.loads((zoo_hub / "index.json").read_text())
    metrics = index["adapters"]["vision/xray-lora"]["versions"]["1"]["metrics"]
    test = metrics["test"] if "test" in metrics else metrics["val"]  # the split a row shows
    test["interval"] = {"metric": "accuracy", "low": 0.25, "high": 0.75, "method": "a bootstrap"}
    (zoo_hub / "index.json").write_text(json.dumps(index))
    _, out, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--format", "json")
    rows = {row["adapter"]: row for row in json.loads(out)}
    assert (rows["vision/xray-lora@1"]["interval_low"], rows["vision/xray-lora@1"]["interval_high"]) == (0.25, 0.75)
    assert rows["protein/gb1-ia3@1"]["interval_low"] is None  # its entry records none
    _, out, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--format", "md")
    vision = next(line for line in out.splitlines() if "vision/xray-lora@1" in line)
    assert f"accuracy {test['metrics']['accuracy']:.4f} (95% CI 0.250-0.750)" in vision


def test_json_has_the_same_rows_under_stable_keys(zoo_hub, capsys):
    _, out, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--format", "json")
    rows = json.loads(out)
    assert all(list(row) == KEYS for row in rows)
    expected = expected_rows(zoo_hub)
    for row in rows:
        want = expected[row["adapter"]]
        assert row["trainable_parameters"] == want["trainable_parameters"]
        assert (row["value"], row["measured_as"], row["split"]) == (want["value"], want["measured_as"], want["split"])
        assert row["adapter_bytes"] == want["adapter_bytes"]
    _, csv_out, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--format", "csv")
    assert [row["adapter"] for row in csv.DictReader(io.StringIO(csv_out))] == [row["adapter"] for row in rows]


def test_markdown_has_a_row_per_adapter_and_keeps_a_pipe_inside_its_cell(zoo_hub, capsys):
    _, out, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--format", "md")
    header, rule, *rows = out.splitlines()
    cells = lambda line: re.split(r"(?<!\\)\|", line)[1:-1]
    assert len(rows) == len(expected_rows(zoo_hub)) == 3
    assert all(len(cells(row)) == len(cells(header)) == 10 for row in rows)
    vision = next(row for row in rows if "vision/xray-lora@1" in row)
    assert "hf-hub:org/vit\\|tiny" in vision and "local copy" not in vision and "1,234" in vision


def test_each_row_says_how_to_try_the_adapter_with_an_input_of_its_domain(zoo_hub, capsys):
    _, out, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--format", "json")
    tries = {row["adapter"].split("@")[0]: shlex.split(row["try"]) for row in json.loads(out)}
    for name, words in tries.items():
        assert words[:3] == ["zoo", "predict", name] and words[-2:] == ["--hub", str(zoo_hub)]
    assert tries["vision/xray-lora"][3:-2] == ["xray.png"]
    assert re.fullmatch(r"[ACDEFGHIKLMNPQRSTVWY]{20,}", tries["protein/gb1-ia3"][3])
    assert " " in tries["text/sst2-lora"][3]  # one sentence, quoted as one argument
    # the example is one of the adapter's own reference inputs where it has a short one
    index = json.loads((zoo_hub / "index.json").read_text())
    latest = index["adapters"]["text/sst2-lora"]["versions"]["2"]
    assert tries["text/sst2-lora"][3] == latest["reference_predictions"][0]["input"]
    assert tries["protein/gb1-ia3"][3] == "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"
    # the shipped adapters come from the default hub, which needs no --hub
    _, out, _ = run_cli(capsys, "ls", "adapters", "--hub", DEFAULT_HUB, "--format", "json")
    assert all("--hub" not in row["try"] for row in json.loads(out))


def test_a_pattern_filters_the_rows_and_no_match_is_still_well_formed(zoo_hub, capsys):
    _, out, _ = run_cli(capsys, "ls", "adapters", "vision/*", "--hub", zoo_hub, "--format", "csv")
    assert [row["adapter"] for row in csv.DictReader(io.StringIO(out))] == ["vision/xray-lora@1"]
    code, out, err = run_cli(capsys, "ls", "adapters", "speech/*", "--hub", zoo_hub, "--format", "json")
    assert code == 0 and json.loads(out) == [] and "no adapters matching 'speech/*'" in err


def test_the_table_stays_the_default(zoo_hub, capsys):
    _, default, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub)
    _, table, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--format", "table")
    assert default == table and len(default.splitlines()) == 3 and f"[{zoo_hub}]" in default


def test_the_page_of_another_hub_names_its_command_and_that_command_writes_it(zoo_hub, capsys):
    _, page, _ = run_cli(capsys, "ls", "adapters", "--hub", zoo_hub, "--page")
    command = re.search(r"```bash\n(.*) > docs/zoo.md\n```", page).group(1)
    assert shlex.split(command) == ["zoo", "ls", "adapters", "--page", "--hub", str(zoo_hub)]
    _, again, _ = run_cli(capsys, *shlex.split(command)[1:], "--format", "md")
    assert again == page and page.startswith("# Model zoo\n") and f"the hub `{zoo_hub}`" in " ".join(page.split())


def test_a_format_that_does_not_exist_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["ls", "adapters", "--format", "xml"])
    err = capsys.readouterr().err
    assert refused.value.code == 2
    assert "invalid choice: 'xml'" in err and "'table', 'md', 'csv', 'json'" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ls", "adapters", "--page", "--format", "csv"], "--page writes a Markdown page; drop --format csv"),
        (["ls", "recipes", "--format", "md"], "--format and --page list adapters only"),
    ],
)
def test_a_format_where_it_does_not_apply_is_refused_naming_the_fix(argv, message, capsys):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err


@pytest.mark.parametrize(
    "size, shown", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (303051, "295.9 KiB"), (5 << 20, "5.0 MiB")]
)
def test_sizes_are_shown_in_binary_units(size, shown):
    assert human_size(size) == shown
