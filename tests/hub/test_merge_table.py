"""The merge table on tiny runs: the single-task rows are the adapters' own test metrics, each merged cell
is its run's metric recomputed from the kept predictions, the Δ is merged minus single on the same rows,
DARE's seeds are averaged with a t-interval, and a second call reuses every merge and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zoo.hub.merge_table import SINGLE, MergeSetting, measure, render, summarise

SETTINGS = (
    MergeSetting("average", "linear", 0.5),
    MergeSetting("DARE", "dare_linear", 0.5, 0.5, (0, 1)),
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import zoo

    root = tmp_path_factory.mktemp("runs")
    tiny = ["scale=tiny", "backbone.name=minilm_l6"]
    return [
        str(zoo.run("text/sst2-lora", tiny, out=root / "sst2-lora", log=None).dir),
        str(zoo.run("text/agnews-lora", tiny, out=root / "agnews-lora", log=None).dir),
    ]


def accuracy(predictions) -> float:
    return float(np.mean(predictions.output.argmax(-1) == predictions.target))


def test_cells_deltas_and_seeds_against_a_hand_computation(runs, tmp_path):
    from zoo.hub.evaluate import evaluate

    measured = measure(runs, tmp_path / "table", SETTINGS, log=lambda _: None)
    assert [(m.setting, m.task, m.seed) for m in measured] == [
        (SINGLE, "sst2", None),
        (SINGLE, "agnews", None),
        ("average", "sst2", None),
        ("average", "agnews", None),
        ("DARE", "sst2", 0),
        ("DARE", "agnews", 0),
        ("DARE", "sst2", 1),
        ("DARE", "agnews", 1),
    ]
    assert measured[0].value == evaluate(runs[0], log=None).metrics["accuracy"]
    for m in measured:
        assert m.metric == "accuracy" and m.value == pytest.approx(accuracy(m.predictions))
    records = {(r["setting"], r["task"]): r for r in summarise(measured)}
    single, average = records[(SINGLE, "sst2")], records[("average", "sst2")]
    assert average["delta"] == pytest.approx(average["mean"] - single["mean"])
    assert average["delta_low"] <= average["delta"] <= average["delta_high"]
    dare = [m.value for m in measured if m.setting == "DARE" and m.task == "agnews"]
    record = records[("DARE", "agnews")]
    assert record["mean"] == pytest.approx(np.mean(dare)) and record["seeds"] == 2
    if dare[0] != dare[1]:  # t(0.975, 1 df) = 12.706
        half = 12.7062047 * np.std(dare, ddof=1) / np.sqrt(2)
        assert record["high"] - record["mean"] == pytest.approx(half, rel=1e-6)
    assert record["retained"] == pytest.approx(record["mean"] / records[(SINGLE, "agnews")]["mean"])
    # the merged run directories say what was merged
    merge = json.loads(
        (tmp_path / "table" / "merges" / "dare_linear-w0.5-d0.5-seed1" / "sst2" / "run.json").read_text()
    )
    assert merge["merge"]["method"] == "dare_linear" and merge["merge"]["seed"] == 1
    written = render(measured, tmp_path / "out", "# merges")
    markdown = written[0].read_text()
    assert "| single-task adapter |" in markdown and "| DARE |" in markdown and "kept of single-task" in markdown


def test_a_second_call_reuses_every_merge_and_evaluation(runs, tmp_path, monkeypatch):
    first = measure(runs, tmp_path / "table", SETTINGS[:1], log=lambda _: None)

    def refuse(*args, **kwargs):
        raise AssertionError("merged or evaluated again")

    monkeypatch.setattr("zoo.hub.merging.merge_runs", refuse)
    monkeypatch.setattr("zoo.hub.evaluate.evaluate", refuse)
    again = measure(runs, tmp_path / "table", SETTINGS[:1], log=lambda _: None)
    assert [(m.setting, m.task, m.value) for m in again] == [(m.setting, m.task, m.value) for m in first]


def test_two_adapters_of_one_task_are_refused(runs, tmp_path):
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="one adapter per task"):
        measure([runs[0], runs[0]], tmp_path / "table", SETTINGS[:1], log=lambda _: None)
    with pytest.raises(ConfigError, match="at least two adapters"):
        measure([runs[0]], tmp_path / "table", SETTINGS[:1], log=lambda _: None)


def test_the_evaluations_alone_render_the_table_again(runs, tmp_path, monkeypatch):
    import shutil

    first = measure(runs, tmp_path / "table", SETTINGS[:1], log=lambda _: None)
    shutil.rmtree(tmp_path / "table" / "merges")  # the adapters' weights are not kept with the records
    monkeypatch.setattr("zoo.hub.merging.merge_runs", lambda *a, **k: pytest.fail("merged again"))
    again = measure(runs, tmp_path / "table", SETTINGS[:1], log=lambda _: None)
    assert [m.value for m in again] == [m.value for m in first]


def test_an_out_folder_of_other_adapters_is_refused_and_kept(runs, tmp_path):
    from zoo.errors import ConfigError

    measure(runs, tmp_path / "table", SETTINGS[:1], log=lambda _: None)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "table").rglob("*"))
    with pytest.raises(ConfigError, match="holds the merge table of"):
        measure(runs[::-1], tmp_path / "table", SETTINGS[:1], log=lambda _: None)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "table").rglob("*")) == before
    (tmp_path / "table" / "table.json").unlink()
    with pytest.raises(ConfigError, match="no table.json"):
        measure(runs, tmp_path / "table", SETTINGS[:1], log=lambda _: None)
    # a name that fails after the first adapter was scored leaves nothing that blocks the corrected call
    with pytest.raises(Exception, match="neither a run directory nor"):
        measure([runs[0], str(tmp_path)], tmp_path / "again", SETTINGS[:1], log=lambda _: None)
    assert not (tmp_path / "again" / "table.json").exists()
    assert len(measure(runs, tmp_path / "again", SETTINGS[:1], log=lambda _: None)) == 4
