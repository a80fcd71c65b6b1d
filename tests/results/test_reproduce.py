"""``zoo reproduce`` on small tables written by the tests: cells run, skip, fail, resume and split into shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.results.conftest import write_table
from zoo.experiment import run_dir as runs
from zoo.experiment.predictions import read_predictions
from zoo.results.stats import metric_on_rows
from zoo.train.reporting import read_metrics


def rows_of(out: Path) -> dict[str, dict]:
    from zoo.results.store import ResultsStore

    with ResultsStore(out, create=False) as store:
        return {row["cell"]: row for row in store.rows()}


def test_table_runs_its_cells_and_a_second_run_skips_every_one(zoo, small_table):
    code, out, err = zoo("reproduce", small_table, "--scale", "tiny", "--out", "res")
    assert code == 0, err
    assert "6 cells" in out and "5 complete" in out and "1 n/a" in out
    rows = rows_of(Path("res"))
    assert sorted(rows) == sorted(
        f"{d}/{m}/seed0" for d in ("text", "video_text") for m in ("full", "bitfit", "adapter-tiny")
    )
    na = rows["video_text/adapter-tiny/seed0"]
    assert na["status"] == "n/a" and "adapter" in na["error"]
    lora = rows["text/bitfit/seed0"]
    assert lora["status"] == "complete" and lora["metric"] == "accuracy" and lora["metric_split"] == "val"
    assert 0 < lora["trainable_percent"] < 100 and lora["total_parameters"] > lora["trainable_parameters"]
    assert lora["peak_memory_bytes"] > 0 and lora["train_seconds"] > 0 and lora["adapter_bytes"] > 0
    assert lora["config_hash"] and lora["git_commit"] and lora["packages"]["torch"] and lora["hardware"]["cpus"]
    assert lora["data_splits"]["train"]["sha256"]
    cell_dir = Path("res/small/tiny/text/bitfit/seed0")
    # by hand from the logged validation points: the first step within 5% of the best accuracy
    validation = [(r["step"], r["accuracy"]) for r in read_metrics(cell_dir) if r["split"] == "val"]
    best = max(accuracy for _, accuracy in validation)
    assert lora["steps_to_95pct_best_val"] == next(step for step, accuracy in validation if accuracy >= 0.95 * best)
    assert runs.status(cell_dir) == "complete"  # a normal run directory
    assert json.loads((cell_dir / "result.json").read_text())["config_hash"] == lora["config_hash"]
    assert f"{lora['metric_value']:.4f}" in Path("res/small/tiny/small.md").read_text()  # the table shows the cell
    # no test split: the validation rows at the best step, row by row, give back the reported metric
    assert lora["predictions"] == {"val": "predictions/val.npz"}
    predictions = read_predictions(cell_dir, "val")
    assert predictions is not None and predictions.kind == "classification"
    recomputed = metric_on_rows("accuracy", predictions, predictions.index[None, :])[0]
    assert recomputed == pytest.approx(lora["metric_value"], abs=1e-6)

    code, out, err = zoo("reproduce", small_table, "--scale", "tiny", "--out", "res")
    assert code == 0, err
    assert "6 skipped" in out and "complete" not in out.split("cells in")[1].split("\n")[0]
    code, out, _ = zoo("reproduce", small_table, "--scale", "tiny", "--out", "res", "--dry-run")
    assert code == 0 and "5 done, 1 n/a" in out


def test_changed_configuration_reruns_the_cell(zoo, tmp_path):
    from zoo.results.reproduce import reproduce

    body = """
    name: one
    domains: {text: {recipe: "text/sst2-{method}", metric: accuracy}}
    methods: [full]
    scales: {tiny: {overrides: [scale=tiny, train.max_steps=STEPS]}}
    """
    write_table(tmp_path, body.replace("STEPS", "1"), "one")
    first = reproduce(str(tmp_path / "one.yaml"), "tiny", "res", say=lambda _m: None)
    assert first.outcomes == {"text/full/seed0": "complete"}
    write_table(tmp_path, body.replace("STEPS", "2"), "one")
    second = reproduce(str(tmp_path / "one.yaml"), "tiny", "res", say=lambda _m: None)
    assert second.states == {"text/full/seed0": "stale"} and second.outcomes == {"text/full/seed0": "complete"}
    assert runs.read_json(Path("res/one/tiny/text/full/seed0/run.json"))["training"]["steps"] == 2
    assert list(Path("res/.superseded").iterdir())  # the older run is kept aside


def test_a_failing_cell_is_recorded_and_the_others_go_on(zoo, small_table, monkeypatch):
    from zoo.train import loop

    real_fit = loop.Trainer.fit

    def fit(self, *args, **kwargs):
        if "/tiny/text/bitfit" in str(self.run_dir):
            raise RuntimeError("boom in one cell")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "fit", fit)
    code, out, err = zoo("reproduce", small_table, "--scale", "tiny", "--out", "res")
    assert code == 1  # a failed cell: exit status 1, the table still made
    assert "1 failed" in out and "4 complete" in out, out
    row = rows_of(Path("res"))["text/bitfit/seed0"]
    assert row["status"] == "failed" and "boom in one cell" in row["error"]
    assert "failed" in Path("res/small/tiny/small.md").read_text()
    monkeypatch.setattr(loop.Trainer, "fit", real_fit)  # fixed: the rerun runs only the failed cell
    code, out, err = zoo("reproduce", small_table, "--scale", "tiny", "--out", "res")
    assert code == 0, err
    assert "1 complete" in out and "5 skipped" in out


def test_ctrl_c_marks_the_cell_interrupted_and_the_rerun_resumes_it(zoo, small_table, monkeypatch):
    from zoo.train import loop

    real_step = loop.Trainer._train

    def interrupted(self, reporter):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "_train", interrupted)
    code, out, _ = zoo("reproduce", small_table, "--scale", "tiny", "--out", "res")
    assert code == 130 and "interrupted" in out
    first = Path("res/small/tiny/text/full/seed0")
    assert runs.status(first) == "interrupted"
    assert not Path("res/small/tiny/text/bitfit").exists()  # Ctrl-C stops the table
    monkeypatch.setattr(loop.Trainer, "_train", real_step)
    code, out, err = zoo("reproduce", small_table, "--scale", "tiny", "--out", "res")
    assert code == 0, err
    assert runs.status(first) == "complete"
    assert runs.read_json(first / "run.json").get("resumes")  # continued in place, not started anew
    assert "5 complete" in out and "1 n/a" in out


def test_shards_partition_the_table(tmp_path):
    from zoo.results.cells import parse_shard, plan, shard
    from zoo.results.spec import load_table

    cells = plan(load_table("cross-domain"), "tiny", tmp_path)
    assert len(cells) == 18 * 6  # 18 method rows; text twice: SST-2 and AG News
    ids = [cell.id for cell in cells]
    parts = [[cell.id for cell in shard(cells, index, 4)] for index in range(1, 5)]
    assert sorted(sum(parts, [])) == sorted(ids)  # every cell once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for text in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(text)


def test_two_shards_share_one_output_folder(zoo, small_table):
    assert zoo("reproduce", small_table, "--out", "res", "--shard", "1/2")[0] == 0
    code, out, _ = zoo("reproduce", small_table, "--out", "res", "--shard", "2/2")
    assert code == 0 and "3 cells" in out
    assert len(rows_of(Path("res"))) == 6


def test_slurm_executor_submits_a_job_array(small_table):
    # submitit's debug executor runs the array's tasks in the submitting process (the same code path as
    # Slurm's) and swaps that process's stdout and stderr while it does: run it in a process of its own.
    command = [
        sys.executable,
        "-m",
        "zoo.cli.main",
        "reproduce",
        str(small_table),
        "--out",
        "res",
        "--executor",
        "slurm",
        "--slurm",
        "cluster=debug",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 0, err
    assert "submitted 6 cells" in out and "5 complete" in out and "1 n/a" in out
    assert len(rows_of(Path("res"))) == 6


def test_table_spec_errors_are_clear(zoo, tmp_path):
    code, _, err = zoo("reproduce", "cross-domian", "--dry-run")
    assert code == 2 and "unknown table 'cross-domian'" in err and "cross-domain" in err
    write_table(tmp_path, "name: bad\ndomains: {}\nmethods: [lora]\nseedz: [1]\n", "bad")
    code, _, err = zoo("reproduce", tmp_path / "bad.yaml", "--dry-run")
    assert code == 2 and "unknown key 'seedz'" in err
    write_table(
        tmp_path,
        'domains: {text: {recipe: "text/sst2-{method}", metric: accuracy}}\nmethods: [lorra]\n'
        "baseline: null\nscales: {tiny: {}}\n",
        "typo",
    )
    code, _, err = zoo("reproduce", tmp_path / "typo.yaml", "--dry-run")
    assert code == 2 and "cell text/lorra/seed0" in err and "'lora'" in err  # the unknown method, with close matches
    write_table(
        tmp_path,
        'domains: {text: {recipe: "text/sst2-{method}", metric: accuracy}}\nmethods: [lora, bitfit]\n'
        "baseline: null\nscales: {tiny: {methods: [lora, ia3]}}\n",
        "scale_methods",
    )
    code, _, err = zoo("reproduce", tmp_path / "scale_methods.yaml", "--dry-run")
    assert code == 2 and "scale tiny names methods ['ia3'] that the table lacks" in err
    code, _, err = zoo("reproduce", "cross-domain", "--scale", "paper", "--dry-run", "--shard", "3/2")
    assert code == 2 and "--shard" in err


def test_shipped_tables_are_valid_and_not_recipes():
    from zoo.experiment.recipes import list_recipes
    from zoo.peft import list_methods
    from zoo.results.spec import list_tables, load_table

    assert {"cross-domain", "data-scale"} <= set(list_tables())
    assert not [name for name in list_recipes() if name.startswith("tables")]
    cross = load_table("cross-domain")
    assert {m.method for m in cross.method_entries()} == set(list_methods())
    assert set(cross.scales) == {"tiny", "cpu", "paper"}
    scale = load_table("data-scale")
    assert scale.train_sizes == [100, 1000, 10000] and scale.seeds == [0, 1, 2]
    assert [m.label for m in scale.method_entries()] == ["full", "lora", "ia3", "bitfit", "prefix", "loreft", "adapter"]


def test_cpu_scale_runs_three_seeds_of_the_real_domains(tmp_path, monkeypatch):
    from zoo.results.cells import plan
    from zoo.results.spec import load_table

    monkeypatch.setenv("ZOO_MODELS_DIR", str(tmp_path / "models"))  # where ../shared/models would be

    cells = plan(load_table("cross-domain"), "cpu", tmp_path)
    seeds: dict[str, set[int]] = {}
    for cell in cells:
        seeds.setdefault(cell.domain, set()).add(cell.seed)
    real = {domain: {0, 1, 2} for domain in ("text", "agnews", "vision", "protein")}
    assert seeds == {**real, "speech": {0}, "video_text": {0}}
    methods = load_table("cross-domain").scale("cpu").methods
    assert methods and {cell.method_label for cell in cells} == set(methods)
    assert len(cells) == len(methods) * (3 + 3 + 3 + 3 + 1 + 1)
    assert {cell.seed for cell in plan(load_table("data-scale"), "cpu", tmp_path)} == {0, 1, 2}


SEEDED = """
name: seeded
baseline: full
domains:
  vision: {recipe: "vision/medical-{method}", metric: accuracy}
  protein: {recipe: "protein/gb1-{method}", metric: spearman}
methods: [full, bitfit]
seeds: [0, 1]
scales:
  tiny: {overrides: [scale=tiny, train.max_steps=2]}
"""


def test_a_table_records_test_predictions_and_renders_intervals_and_the_paired_test(zoo, tmp_path):
    import csv

    import numpy as np

    from zoo.results.stats import paired_bootstrap, t_interval

    code, out, err = zoo("reproduce", write_table(tmp_path, SEEDED, "seeded"), "--scale", "tiny", "--out", "res")
    assert code == 0, err
    assert "8 complete" in out
    rows = rows_of(Path("res"))
    for cell, row in rows.items():  # each run's test outputs, row by row, give back the metric it reported
        assert row["predictions"] == {"test": "predictions/test.npz"}  # the row names the file
        predictions = read_predictions(row["run_dir"], "test")
        assert predictions is not None and row["metric_split"] == "test", cell
        assert predictions.kind == ("classification" if cell.startswith("vision") else "regression")
        assert np.array_equal(predictions.index, np.arange(len(predictions.target)))
        recomputed = metric_on_rows(row["metric"], predictions, predictions.index[None, :])[0]
        assert recomputed == pytest.approx(row["metric_value"], abs=1e-5, nan_ok=True), cell
    markdown = Path("res/seeded/tiny/seeded.md").read_text()
    records = {(r["domain"], r["method"]): r for r in csv.DictReader(Path("res/seeded/tiny/seeded.csv").open())}
    values = [rows[f"vision/bitfit/seed{s}"]["metric_value"] for s in (0, 1)]
    mean, half = t_interval(values)
    bitfit = records[("vision", "bitfit")]
    assert float(bitfit["ci95_half_width"]) == pytest.approx(half) and bitfit["seeds"] == "2"
    assert f"{mean:.4f} ± {half:.4f}" in markdown  # the interval column, by the t-interval of the two seeds
    assert "mean ± 95% t-interval over 2 seeds (Student t, n-1 df)" in markdown
    assert "▲ better / ▼ worse than `full`" in markdown
    # the paired test ran on the recorded predictions of both seeds, seed i paired with seed i
    pairs = [
        {s: read_predictions(rows[f"vision/{m}/seed{s}"]["run_dir"], "test") for s in (0, 1)}
        for m in ("bitfit", "full")
    ]
    expected = paired_bootstrap(*pairs, "accuracy")
    low, high, p = (float(bitfit[k]) for k in ("delta_ci95_low", "delta_ci95_high", "delta_p_value"))
    assert (low, high, p) == pytest.approx((expected.low, expected.high, expected.p_value))
    assert expected.difference == pytest.approx(float(bitfit["delta_vs_baseline"]))
    assert "paired bootstrap" in bitfit["paired_test"] and "2 seed(s)" in bitfit["paired_test"]
    assert bitfit["vs_baseline"] == {"▲": "better", "▼": "worse", "": "no difference shown"}[expected.mark]
    assert records[("protein", "bitfit")]["delta_p_value"] != ""  # Spearman, recomputed on each resample
    assert records[("vision", "full")]["delta_ci95_low"] == ""  # the baseline is not tested against itself


def test_a_published_entry_shows_only_in_the_scales_it_names():
    from zoo.results.spec import TableSpec, load_table

    spec = TableSpec.model_validate(
        {
            "name": "published",
            "domains": {"text": {"recipe": "text/sst2-{method}", "metric": "accuracy"}},
            "methods": ["full"],
            "published": [
                {"method": "full", "domain": "text", "value": 0.948, "citation": "RoBERTa", "scales": ["paper"]},
                {"method": "full", "domain": "text", "value": 0.915, "citation": "MiniLM", "scales": ["cpu"]},
            ],
        }
    )
    assert spec.published_for("full", "text", None, "cpu").citation == "MiniLM"
    assert spec.published_for("full", "text", None, "paper").citation == "RoBERTa"
    assert spec.published_for("full", "text", None, "tiny") is None
    cross = load_table("cross-domain")
    assert cross.published_for("full", "text", None, "cpu").value == 0.915  # MiniLM's own, not RoBERTa's
    shown = [cross.published_for("full", "agnews", None, scale) is not None for scale in ("tiny", "cpu", "paper")]
    assert shown == [False, True, True]  # BERT-base on AG News sits beside the cpu and paper tables
