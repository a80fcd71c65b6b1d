"""A result row reads the run's record: the main metric it recorded (never a guessed one), and the same
numbers from a run of the older flat run.json layout."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    import zoo

    # a regression task: its main metric is not accuracy, and lower is not better for it
    return zoo.run(
        "protein/gb1-lora",
        ["scale=tiny", "train.max_steps=2"],
        out=tmp_path_factory.mktemp("r") / "run",
        log=None,
    )


def test_the_row_states_the_recorded_main_metric_and_the_counts(regression_run):
    from zoo.results.rows import row_from_run

    record = json.loads((regression_run.dir / "run.json").read_text())
    row = row_from_run(regression_run.dir)
    assert row["main_metric"] == row["metric"] == record["task"]["main_metric"] != "accuracy"
    assert row["metric_split"] == "test"  # the table's number: the test split's, when there is one
    assert row["metric_value"] == regression_run.metrics("test")[row["main_metric"]]
    assert (row["trainable_parameters"], row["total_parameters"]) == (
        record["parameters"]["trainable"],
        record["parameters"]["total"],
    )
    assert row["steps"] == 2 and row["packages"] == record["versions"]
    assert row["data_splits"]["train"]["sha256"] == record["data"]["splits"]["train"]["sha256"]


def test_a_run_that_recorded_no_main_metric_gets_none_not_accuracy(regression_run, tmp_path):
    import shutil

    from zoo.results.rows import row_from_run

    failed = tmp_path / "failed"
    shutil.copytree(regression_run.dir, failed)
    (failed / "run.json").write_text(json.dumps({"record_version": 2, "status": "failed", "error": "OSError: x"}))
    (failed / "eval_results.json").unlink()
    config = (failed / "config.yaml").read_text()
    assert "main_metric: spearman" in config
    (failed / "config.yaml").write_text(config.replace("main_metric: spearman", "main_metric: null"))
    row = row_from_run(failed)
    assert (row["status"], row["main_metric"], row["metric_value"]) == ("failed", None, None)


def test_a_run_of_the_older_flat_layout_gives_the_same_row(regression_run, tmp_path):
    import shutil

    from zoo.results.rows import row_from_run

    record = json.loads((regression_run.dir / "run.json").read_text())
    old = tmp_path / "old"
    shutil.copytree(regression_run.dir, old)
    flat = {
        "status": "complete",
        "recipe": record["recipe"],
        "command": record["command"],
        "started": record["started"],
        "finished": record["finished"],
        "main_metric": record["task"]["main_metric"],
        "steps": record["training"]["steps"],
        "best_metric": record["training"]["best_metric"],
        "trainable_parameters": record["parameters"]["trainable"],
        "total_parameters": record["parameters"]["total"],
        "train_seconds": record["training"]["seconds"],
        "peak_memory_bytes": record["memory"]["peak_bytes"],
        "peak_memory_kind": record["memory"]["kind"],
    }
    (old / "run.json").write_text(json.dumps(flat))
    new_row, old_row = row_from_run(regression_run.dir), row_from_run(old)
    for key in ("main_metric", "metric_value", "steps", "best_val_metric", "trainable_percent", "peak_memory_bytes"):
        assert old_row[key] == new_row[key], key
    assert old_row["steps_to_95pct_best_val"] == new_row["steps_to_95pct_best_val"]
