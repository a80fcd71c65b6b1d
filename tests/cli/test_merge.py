"""``zoo merge`` end to end on tiny runs: what it writes is a run directory that ``zoo predict`` reads,
one per task when the tasks' heads differ, and bad input is refused before anything is built."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

TEXTS = ["a gripping, beautifully acted film", "stocks rallied on the news"]
MINILM = ["scale=tiny"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs on one tiny MiniLM (same seed: the same random weights): AG News (4 topics) and SST-2
    (2 classes) with LoRA, and AG News with IA3."""
    import zoo

    root = tmp_path_factory.mktemp("runs")
    made = {
        "agnews": zoo.run("text/agnews-lora", MINILM, out=root / "agnews-lora", log=None),
        "sst2": zoo.run("text/sst2-lora", [*MINILM, "backbone.name=minilm_l6"], out=root / "sst2-lora", log=None),
        "ia3": zoo.run("text/agnews-ia3", [*MINILM, "train.max_steps=1"], out=root / "agnews-ia3", log=None),
    }
    return {name: run.dir for name, run in made.items()}


def predictions(zoo, folder):
    code, out, err = zoo("predict", folder, *TEXTS, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def scores(rows):
    return torch.tensor([list(row["scores"].values()) for row in rows])


def test_merging_a_run_with_itself_from_a_hub_predicts_as_the_run(zoo, runs, tmp_path):
    from zoo.hub.push import push

    hub = tmp_path / "hub"
    push(runs["agnews"], hub, log=None)
    code, out, err = zoo(
        "merge", "text/agnews-lora", runs["agnews"] / "adapter", "--weights", "0.5,0.5", "--hub", hub, "--out", "merged"
    )
    assert code == 0, err
    assert "zoo predict merged" in out and "rank 16" in out
    assert (tmp_path / "merged" / "config.yaml").is_file()  # one shared head: the folder is the run directory
    merged, original = predictions(zoo, "merged"), predictions(zoo, runs["agnews"])
    assert [row["label"] for row in merged] == [row["label"] for row in original]
    torch.testing.assert_close(scores(merged), scores(original), atol=1e-5, rtol=0)
    record = json.loads((tmp_path / "merged" / "run.json").read_text())
    assert record["merge"]["weights"] == [0.5, 0.5] and record["merge"]["method"] == "linear"
    assert record["merge"]["relative_error"]["max"] < 1e-6


def test_runs_of_two_tasks_keep_each_task_head(zoo, runs, tmp_path):
    args = ("merge", runs["agnews"], runs["sst2"], "--weights", "0.6,0.4", "--method", "ties", "--density", "0.5")
    code, out, err = zoo(*args, "--out", "both")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["agnews", "sst2"]
    assert "zoo predict both/sst2" in out and "zoo predict both/agnews" in out
    assert set(predictions(zoo, "both/sst2")[0]["scores"]) == {"negative", "positive"}
    assert set(predictions(zoo, "both/agnews")[0]["scores"]) == {"World", "Sports", "Business", "Sci/Tech"}
    sst2 = json.loads((tmp_path / "both" / "sst2" / "run.json").read_text())
    assert sst2["task"]["num_outputs"] == 2 and sst2["merge"]["density"] == 0.5
    assert "# made by zoo merge" in (tmp_path / "both" / "agnews" / "config.yaml").read_text()


def test_bad_input_is_refused_before_anything_is_built(zoo, runs, tmp_path):
    other_weights = tmp_path / "other-weights"
    shutil.copytree(runs["sst2"], other_weights)
    record = json.loads((other_weights / "run.json").read_text())
    record["backbone"]["fingerprint"] = "sha256:" + "0" * 64
    (other_weights / "run.json").write_text(json.dumps(record))
    bare = shutil.copytree(runs["sst2"] / "adapter", tmp_path / "bare-adapter")
    (tmp_path / "taken").mkdir()
    a, b = runs["agnews"], runs["sst2"]
    refusals = [
        ((a, b, "--weights", "1", "--out", "x"), "1 weight(s) for 2 adapter(s)"),
        ((a, b, "--weights", "1,1", "--method", "ties", "--density", "1.5", "--out", "x"), "outside (0, 1]"),
        ((a, b, "--weights", "1,1", "--method", "tie", "--out", "x"), "Did you mean 'ties'"),
        ((a, b, "--weights", "1,one", "--out", "x"), "numbers separated by commas"),
        ((a, b, "--weights", "1,1", "--out", "taken"), "--out taken already exists"),
        ((a, runs["ia3"], "--weights", "1,1", "--out", "x"), "different methods"),
        ((a, other_weights, "--weights", "1,1", "--out", "x"), "different backbones"),
        ((a, bare, "--weights", "1,1", "--out", "x"), "neither a run directory nor a pulled adapter"),
    ]
    for args, message in refusals:
        code, _, err = zoo("merge", *args)
        assert code == 2 and message in err, (args, err)
    assert not (tmp_path / "x").exists()


def test_options_that_leave_the_weights_alone_may_differ_where_the_fingerprints_agree(zoo, runs, tmp_path):
    """A tokenizer's max_length is a backbone option; with the same recorded weights the runs merge, each task
    keeping its own; without a recorded fingerprint on one side the options must agree."""
    import yaml

    longer = shutil.copytree(runs["sst2"], tmp_path / "sst2-longer")
    config = yaml.safe_load((longer / "config.yaml").read_text())
    config["backbone"]["options"]["max_length"] = 48
    (longer / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = zoo("merge", runs["agnews"], longer, "--weights", "1,1", "--out", "merged")
    assert code == 0, err
    merged = yaml.safe_load((tmp_path / "merged" / "sst2" / "config.yaml").read_text())
    assert merged["backbone"]["options"]["max_length"] == 48
    record = json.loads((longer / "run.json").read_text())
    record["backbone"]["fingerprint"] = None
    (longer / "run.json").write_text(json.dumps(record))
    code, _, err = zoo("merge", runs["agnews"], longer, "--weights", "1,1", "--out", "again")
    assert code == 2 and "different backbones" in err and not (tmp_path / "again").exists()
