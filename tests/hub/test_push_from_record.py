"""``zoo push`` publishes a finished run from its record alone: it builds no backbone and reads no data
(the runner recorded the fingerprint, the data files, the class names and the reference outputs), and
what it publishes still pulls, passes the fingerprint check and predicts what the run's model predicts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

NAME = "text/sst2-lora"


def forbidden(*args, **kwargs):
    raise AssertionError("zoo push built a backbone or read a dataset")


def test_push_builds_no_backbone_and_reads_no_data_and_the_entry_pulls_and_predicts(tiny_run, tmp_path, monkeypatch):
    import zoo.catalog.backbones
    import zoo.catalog.datasets
    import zoo.experiment.build
    import zoo.hub
    from zoo.experiment.fingerprint import backbone_fingerprint
    from zoo.hub.push import push
    from zoo.hub.reference import check_reference_predictions

    for module, name in (
        (zoo.catalog.backbones, "create_backbone"),
        (zoo.experiment.build, "create_backbone"),
        (zoo.experiment.build, "build_backbone"),
        (zoo.experiment.build, "build_model"),
        (zoo.catalog.datasets, "load_dataset"),
        (zoo.experiment.build, "load_dataset"),
        (zoo.experiment.build, "load_datasets"),
        (zoo.experiment.build, "load_split_source"),
    ):
        monkeypatch.setattr(module, name, forbidden)
    entry = push(tiny_run.dir, tmp_path / "hub", log=None)
    monkeypatch.undo()

    # what the entry says is what the run recorded, and what the run's files say
    record = json.loads((tiny_run.dir / "run.json").read_text())
    assert entry["backbone"]["fingerprint"] == record["backbone"]["fingerprint"]
    assert entry["task"]["labels"] == record["task"]["labels"] == ["negative", "positive"]
    for role, split in entry["dataset"]["splits"].items():
        assert split["sha256"] == record["data"]["splits"][role]["sha256"]
    assert "config" not in entry["method"]  # LoRA's options are in adapter/adapter_config.json alone

    # the recorded fingerprint is that of the backbone built afresh (independently of the runner)
    config = tiny_run.config
    resolved = zoo.experiment.build.resolve(config)
    import torch

    torch.manual_seed(config.train.seed)
    fresh = zoo.experiment.build.build_backbone(config, resolved)
    assert backbone_fingerprint(fresh) == entry["backbone"]["fingerprint"]

    # the pulled copy is built through zoo.experiment.build, checked against the fingerprint, and
    # predicts what the run directory's own model predicts
    predictor = zoo.hub.load(f"{NAME}@{entry['version']}", hub=str(tmp_path / "hub"), log=None)
    references = entry["reference_predictions"]
    assert len(references) == 2 and check_reference_predictions(predictor, entry) == 2
    direct = zoo.hub.load(tiny_run.dir, log=None).predict([item["input"] for item in references])
    for item, output in zip(references, direct):
        assert item["output"]["label"] == output["label"]
        assert item["output"]["scores"] == pytest.approx(output["scores"], abs=1e-5)


PUSH_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    from zoo.hub.push import push

    push(sys.argv[1], sys.argv[2], log=None)
    print(json.dumps(sorted(name for name in sys.modules if name.startswith("zoo_domains"))))
    """
)


def test_push_imports_no_domain_module(tiny_run, tmp_path):
    """Nothing of the domain (its data module, its backbones) is imported: the registries are never read."""
    result = subprocess.run(
        [sys.executable, "-c", PUSH_IN_A_FRESH_PROCESS, str(tiny_run.dir), str(tmp_path / "hub")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
    assert (tmp_path / "hub" / "index.json").is_file()


def test_a_run_of_the_older_layout_is_read_and_its_push_says_to_train_again(tiny_run, tmp_path):
    import shutil

    import zoo
    from zoo.errors import HubError
    from zoo.hub.push import push

    old = tmp_path / "old-run"
    shutil.copytree(tiny_run.dir, old)
    record = json.loads((old / "run.json").read_text())
    flat = {  # run.json as zoo wrote it before the record had sections
        "recipe": record["recipe"],
        "command": record["command"],
        "started": record["started"],
        "status": "complete",
        "num_outputs": 2,
        "steps": 4,
        "main_metric": "accuracy",
        "best_metric": 0.5,
        "best_step": 2,
        "trainable_parameters": 2114,
        "total_parameters": 31876,
        "train_seconds": 1.5,
        "data": {"name": "sst2", "splits": {"train": {"rows_used": 6, "rows": 6, "file": "/x/train.tsv"}}},
    }
    (old / "run.json").write_text(json.dumps(flat))
    run = zoo.load_run(old)
    assert (run.status, run.record.main_metric, run.record.num_outputs) == ("complete", "accuracy", 2)
    assert (run.record.parameters.trainable, run.record.training.steps) == (2114, 4)
    with pytest.raises(HubError, match=r"trained by an older zoo.*train it again with this zoo"):
        push(old, tmp_path / "hub", log=None)
    assert not (tmp_path / "hub" / "index.json").exists()
