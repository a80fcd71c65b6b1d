"""The results store: rows from any run, concurrent writers, a corrupt file and its rebuild."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from zoo.errors import ResultsStoreError
from zoo.results.store import ResultsStore, rebuild


def fake_row(run_dir: str, **fields) -> dict:
    return {"run_dir": run_dir, "status": "complete", "table": "t", "scale": "tiny", "cell": run_dir, **fields}


def _writer(folder: str, worker: int, count: int) -> None:
    with ResultsStore(folder) as store:
        for index in range(count):
            store.add(fake_row(f"{folder}/w{worker}/r{index}", metric_value=float(index)))


def test_several_processes_write_at_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), worker, 25)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    with ResultsStore(tmp_path) as store:
        rows = store.rows()
    assert len(rows) == 100 and len({row["run_dir"] for row in rows}) == 100


def test_add_takes_a_zoo_train_run(zoo):
    assert zoo("train", "text/sst2-bitfit", "scale=tiny", "train.max_steps=2", "--out", "runs/one")[0] == 0
    code, out, err = zoo("results", "add", "runs/one", "--out", "store")
    assert code == 0, err
    with ResultsStore("store") as store:
        (row,) = store.rows()
    assert row["method"] == "bitfit" and row["domain"] == "text" and row["status"] == "complete"
    assert row["metric"] == "accuracy" and row["random_init"] is True
    # the number is the run's own evaluation: test split when it has one, else validation
    evaluated = json.loads(Path("runs/one/eval_results.json").read_text())
    split = "test" if "test" in evaluated else "val"
    assert (row["metric_split"], row["metric_value"]) == (split, evaluated[split]["metrics"]["accuracy"])
    # the row is kept beside the run as well (all but the time the store recorded it)
    stored = json.loads(json.dumps({key: value for key, value in row.items() if key != "recorded"}))
    assert json.loads(Path("runs/one/result.json").read_text()) == stored


def test_corrupt_store_names_rebuild_and_rebuild_remakes_it(zoo, small_table):
    assert zoo("reproduce", small_table, "--out", "res")[0] == 0
    Path("res/results.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"res/results.sqlite{suffix}").unlink(missing_ok=True)
    code, _, err = zoo("results", "table", small_table, "--out", "res")
    assert code == 2 and "zoo results rebuild res" in err
    code, out, err = zoo("results", "rebuild", "res")
    assert code == 0, err
    assert "from 6 run(s)" in out
    assert list(Path("res").glob("results.sqlite.old-*"))  # the damaged file is kept aside
    code, out, err = zoo("results", "table", small_table, "--out", "res")
    assert code == 0, err
    with ResultsStore("res") as store:
        statuses = sorted(row["status"] for row in store.rows())
    assert statuses == ["complete"] * 5 + ["n/a"]


def test_missing_store_is_a_clear_error(zoo):
    code, _, err = zoo("results", "table", "cross-domain", "--out", "nowhere")
    assert code == 2 and "no results store" in err


def test_steps_to_95_percent_of_best():
    from zoo.results.rows import steps_to_fraction_of_best

    history = [
        {"split": "val", "step": 10, "acc": 0.5},
        {"split": "train", "step": 15, "acc": 9.0},
        {"split": "val", "step": 20, "acc": 0.86},
        {"split": "val", "step": 30, "acc": 0.9},
    ]
    assert steps_to_fraction_of_best(history, "acc", True) == 20  # 0.86 >= 0.95 * 0.9 = 0.855
    losses = [
        {"split": "val", "step": 5, "loss": 2.0},
        {"split": "val", "step": 9, "loss": 1.04},
        {"split": "val", "step": 12, "loss": 1.0},
    ]
    assert steps_to_fraction_of_best(losses, "loss", False) == 9  # 1.04 <= 1.0 + 0.05 * 1.0
    assert steps_to_fraction_of_best([], "acc", True) is None


def test_rebuild_of_a_folder_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        rebuild(tmp_path / "missing")


@pytest.mark.parametrize("command", [("results", "show"), ("results", "table", "cross-domain")])
def test_empty_store_file_is_corrupt_and_names_rebuild(zoo, command):
    Path("res").mkdir()
    Path("res/results.sqlite").write_bytes(b"")  # truncated: SQLite alone would read it as an empty store
    code, out, err = zoo(*command, "--out", "res")
    assert code == 2 and "results.sqlite cannot be read (the file is empty)" in err
    assert "zoo results rebuild res" in err and out == ""
    with pytest.raises(ResultsStoreError, match="zoo results rebuild"):
        ResultsStore("res")
    assert Path("res/results.sqlite").stat().st_size == 0  # left as found for the rebuild to put aside


def test_rebuild_puts_an_empty_store_aside(zoo):
    Path("res").mkdir()
    Path("res/results.sqlite").write_bytes(b"")
    code, out, err = zoo("results", "rebuild", "res")
    assert code == 0, err
    assert [p.stat().st_size for p in Path("res").glob("results.sqlite.old-*")] == [0]
    with ResultsStore("res", create=False) as store:
        assert store.rows() == []


def tiny_run(zoo, out: str) -> Path:
    code, _, err = zoo("train", "text/sst2-bitfit", "scale=tiny", "train.max_steps=2", "--out", out)
    assert code == 0, err
    return Path(out).resolve()


def stored_run_dirs(folder: str) -> list[str]:
    with ResultsStore(folder, create=False) as store:
        return sorted(row["run_dir"] for row in store.rows())


def test_rebuild_keeps_a_run_added_from_outside_the_folder(zoo):
    outside = tiny_run(zoo, "elsewhere/run")
    inside = tiny_run(zoo, "res/run")
    assert zoo("results", "add", outside, "--out", "res")[0] == 0
    code, out, err = zoo("results", "rebuild", "res")
    assert code == 0, err
    assert stored_run_dirs("res") == sorted([str(outside), str(inside)])
    assert "from 1 run(s) under res and 1 from outside it" in out and "dropped" not in err
    code, out, err = zoo("results", "rebuild", "res")  # kept again from the store that rebuild made
    assert code == 0 and stored_run_dirs("res") == sorted([str(outside), str(inside)])


def test_rebuild_names_every_run_it_drops(zoo):
    import shutil

    outside = tiny_run(zoo, "elsewhere/run")
    inside = tiny_run(zoo, "res/run")
    assert zoo("results", "add", outside, inside, "--out", "res")[0] == 0
    shutil.rmtree(outside)
    shutil.rmtree(inside)
    code, out, err = zoo("results", "rebuild", "res")
    assert code == 0, err
    assert stored_run_dirs("res") == [] and "from 0 run(s)" in out
    assert f"dropped {outside}: its folder no longer exists" in err
    assert f"dropped {Path('res', 'run')}: its folder no longer exists" in err


def test_rebuild_says_when_the_previous_store_cannot_tell_what_was_added_from_outside(zoo):
    inside = tiny_run(zoo, "res/run")
    Path("res/results.sqlite").write_bytes(b"")
    code, out, err = zoo("results", "rebuild", "res")
    assert code == 0, err
    assert stored_run_dirs("res") == [str(inside)]
    assert "the previous store could not be read" in err and "zoo results add RUN_DIR --out res" in err


def test_rebuild_fills_the_fields_an_older_result_json_lacks_from_its_run(zoo):
    from zoo.results.store import LATER_FIELDS
    from zoo.train.reporting import read_metrics

    run = tiny_run(zoo, "res/run")
    assert zoo("results", "add", run, "--out", "res")[0] == 0
    result = Path(run) / "result.json"
    older = {k: v for k, v in json.loads(result.read_text()).items() if k not in LATER_FIELDS}
    result.write_text(json.dumps(older))
    assert zoo("results", "rebuild", "res")[0] == 0
    with ResultsStore("res", create=False) as store:
        (row,) = store.rows()
    metric = row["main_metric"]
    logged = [[r["step"], r[metric]] for r in read_metrics(Path(run)) if r.get("split") == "val" and metric in r]
    assert logged and row["val_curve"] == logged
    assert row["train_rows"] == json.loads((Path(run) / "run.json").read_text())["data"]["splits"]["train"]["rows"]
    assert row["metric_value"] == older["metric_value"]  # the rest as recorded
