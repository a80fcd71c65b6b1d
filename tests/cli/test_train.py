"""``zoo train`` end to end at scale=tiny: the run directory, the model card, ``zoo eval`` and
``zoo info`` on it, and an interrupted run carried on by ``--resume`` to the same adapter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.test_recipes import END_TO_END
from zoo.experiment.config import load_config, validate
from zoo.experiment.yaml_files import read_yaml
from zoo.train import Trainer
from zoo.train.checkpoint import BEST_NAME, CHECKPOINT_DIR, LAST_NAME, PREVIOUS_NAME, load
from zoo.train.reporting import METRICS_NAME, TENSORBOARD_DIR


def adapter_tensors(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("recipe", END_TO_END)
def test_recipe_trains_end_to_end_through_the_cli(zoo, tmp_path, recipe):
    code, out, err = zoo("train", recipe, "scale=tiny")
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny" / recipe
    assert f"done: runs/tiny/{recipe}" in out

    # the resolved configuration, as the recipe and overrides give it
    saved = read_yaml(run_dir / "config.yaml")
    assert validate(saved).to_dict() == load_config(recipe, ["scale=tiny"]).to_dict()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete" and record["command"] == f"zoo train {recipe} scale=tiny"
    # the trainer's logs and checkpoints
    lines = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]
    assert lines and any(record["task"]["main_metric"] in line for line in lines)
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / TENSORBOARD_DIR).iterdir())
    assert (run_dir / CHECKPOINT_DIR / BEST_NAME).is_file() and (run_dir / CHECKPOINT_DIR / LAST_NAME).is_file()
    # the adapter in the core's format, evaluation results, the model card
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and adapter_tensors(run_dir)
    results = json.loads((run_dir / "eval_results.json").read_text())
    config = load_config(recipe, ["scale=tiny"])
    assert "val" in results and ("test" in results) == (config.data.test_split is not None)
    card = (run_dir / "README.md").read_text()
    assert f"zoo train {recipe} scale=tiny" in card
    assert f"{record['parameters']['trainable']:,} of {record['parameters']['total']:,}" in card
    main_value = results["val"]["metrics"][record["task"]["main_metric"]]
    assert f"{main_value:.4f}" in card and "Smoke run" in card

    # zoo eval rebuilds the model from config.yaml + adapter/ and gets the same numbers
    split = "test" if "test" in results else "val"
    code, out, err = zoo("eval", run_dir, "--split", split)
    assert code == 0, err
    again = json.loads((run_dir / "eval_results.json").read_text())[split]["metrics"]
    if split == "test":  # the val entry is the trainer's number at the best step, so compare test only
        assert again == pytest.approx(results["test"]["metrics"], abs=1e-5)
    assert record["task"]["main_metric"] in out

    code, out, _ = zoo("info", run_dir)
    assert code == 0 and "(complete)" in out and "adapter/" in out and f"zoo train {recipe} scale=tiny" in out
    assert f"fingerprint {record['backbone']['fingerprint']}" in out
    assert f"{record['parameters']['trainable']:,} of {record['parameters']['total']:,} parameters" in out


def test_model_card_reports_the_parameters_of_the_trained_model(zoo, tmp_path):
    import zoo.peft as zp
    from zoo.experiment import load_run

    assert zoo("train", "vision/medical-bitfit", "scale=tiny", "--out", "card")[0] == 0
    run = load_run(tmp_path / "card").build()
    report = zp.parameter_report(run.model)
    card = (tmp_path / "card" / "README.md").read_text()
    assert f"| Trainable parameters | {report.trainable:,} of {report.total:,}" in card
    assert "`bitfit`" in card and "zoo train vision/medical-bitfit scale=tiny --out card" in card


class Interrupting(Trainer):
    """A trainer whose process is 'killed' (Ctrl-C) after step 3, once that step's checkpoint is written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

        def stop(trainer, step):
            if step == 3:
                raise KeyboardInterrupt

        self.callbacks.append(stop)


def test_interrupted_run_resumes_to_the_same_adapter(zoo, tmp_path):
    # dropout on (lora_dropout 0.1) so that the RNG state must be carried over exactly too
    args = ("train", "vision/medical-lora", "scale=tiny", "train.max_steps=6", "train.checkpoint_every=1")
    assert zoo(*args, "--out", "whole")[0] == 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("zoo.train.Trainer", Interrupting)  # zoo train looks the trainer up when it runs
        code, out, _ = zoo(*args, "--out", "cut")
    assert code == 130 and "--resume" in out
    cut = tmp_path / "cut"
    assert json.loads((cut / "run.json").read_text())["status"] == "interrupted"
    assert (cut / CHECKPOINT_DIR / LAST_NAME).is_file() and (cut / "config.yaml").is_file()
    for final in ("adapter", "README.md", "eval_results.json"):
        assert not (cut / final).exists(), f"{final} written by an unfinished run"
    code, out, _ = zoo("info", cut)
    assert "(interrupted)" in out and "--resume" in out

    # as after `kill -9`: run.json still says running; refused while that process lives, resumed once it is gone
    record = json.loads((cut / "run.json").read_text())
    with subprocess.Popen(["sleep", "30"]) as alive:
        (cut / "run.json").write_text(json.dumps({**record, "status": "running", "pid": alive.pid}))
        code, _, err = zoo(*args, "--out", "cut", "--resume")
        alive.kill()
    assert code == 2 and f"still being trained by process {alive.pid}" in err

    code, out, err = zoo(
        "train",
        "vision/medical-lora",
        "scale=tiny",
        "train.max_steps=7",
        "train.checkpoint_every=1",
        "--out",
        "cut",
        "--resume",
    )
    assert code == 2 and "train.max_steps: 6 in the run, 7 now" in err  # resuming with other settings is refused
    code, out, err = zoo(*args, "--out", "cut", "--resume")
    assert code == 0, err
    record = json.loads((cut / "run.json").read_text())
    assert record["status"] == "complete" and len(record["resumes"]) == 1
    whole, resumed = adapter_tensors(tmp_path / "whole"), adapter_tensors(cut)
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    code, out, _ = zoo(*args, "--out", "cut", "--resume")
    assert code == 0 and "already complete" in out


def test_default_run_directories_do_not_overwrite(zoo, tmp_path):
    args = ("train", "vision/medical-linear", "scale=tiny", "train.max_steps=1")
    assert zoo(*args)[0] == 0 and zoo(*args)[0] == 0
    for name in ("medical-linear", "medical-linear-2"):  # two whole runs side by side
        assert json.loads((tmp_path / "runs/tiny/vision" / name / "run.json").read_text())["status"] == "complete"
    code, _, err = zoo(*args, "--out", "runs/tiny/vision/medical-linear")
    assert code == 2 and "already holds a complete run" in err


def test_resume_past_a_corrupt_last_checkpoint_says_which_one_it_used(zoo, tmp_path, caplog):
    args = ("train", "vision/medical-lora", "scale=tiny", "train.max_steps=6", "train.checkpoint_every=1")
    assert zoo(*args, "--out", "whole")[0] == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("zoo.train.Trainer", Interrupting)
        assert zoo(*args, "--out", "cut")[0] == 130
    last = tmp_path / "cut" / CHECKPOINT_DIR / LAST_NAME
    last.write_bytes(last.read_bytes()[:1000])  # as after a disk filled up under the run
    code, out, err = zoo(*args, "--out", "cut", "--resume")
    assert code == 0, err
    assert f"resumed from cut/{CHECKPOINT_DIR}/{PREVIOUS_NAME}" in out
    assert f"cut/{CHECKPOINT_DIR}/{LAST_NAME} cannot be read" in caplog.text  # a warning: stderr outside pytest
    whole, resumed = adapter_tensors(tmp_path / "whole"), adapter_tensors(tmp_path / "cut")
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_a_diverging_run_fails_with_the_step_and_the_fix(zoo, tmp_path):
    code, _, err = zoo("train", "text/sst2-lora", "scale=tiny", "train.lr=1e30", "--out", "hot")
    assert code == 2
    assert "error: training diverged at step " in err and "(loss nan): lower train.lr" in err
    assert "Input contains NaN" not in err  # not a metric's complaint about the NaN scores it was fed
    record = json.loads((tmp_path / "hot" / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("TrainingDiverged: training diverged at step ")
    assert not (tmp_path / "hot" / "adapter").exists()
    code, out, _ = zoo("info", "hot")  # a resume would keep the learning rate, and diverge again
    assert code == 0 and "(failed)" in out and "train it again with a lower train.lr" in out
    assert "continue with" not in out


def test_training_prints_progress_lines_when_stderr_is_not_a_terminal(zoo, tmp_path):
    code, out, err = zoo("train", "vision/medical-linear", "scale=tiny", "train.max_steps=3", "train.log_every=2")
    assert code == 0, err
    progress = [line for line in err.splitlines() if "examples/s" in line]
    # every log_every steps, and the last one
    assert [line.split(" (")[0] for line in progress] == ["step 2/3", "step 3/3"], err
    assert all(" loss " in line for line in progress)
    assert "examples/s" not in out  # progress is on stderr: stdout stays what the run says it made


def test_the_python_api_with_log_none_prints_nothing(capsys, tmp_path):
    import zoo

    run = zoo.run(
        "vision/medical-linear", ["scale=tiny", "train.max_steps=2", "train.log_every=1"], out="quiet", log=None
    )
    assert run.status == "complete"
    captured = capsys.readouterr()
    assert captured.out == "" and "step " not in captured.err


def test_sigterm_is_handled_during_a_run_only_where_nobody_else_handles_it(tmp_path):
    import zoo as zoo_api

    def previous(signal_number, frame):  # what an application embedding zoo may have installed (submitit does)
        pass

    original = signal.getsignal(signal.SIGTERM)
    seen = {}
    try:
        for before in (signal.SIG_DFL, previous):
            signal.signal(signal.SIGTERM, before)
            during = []
            zoo_api.run(
                "vision/medical-linear",
                ["scale=tiny", "train.max_steps=1"],
                out=f"handled-{len(seen)}",
                log=None,
                callbacks=(lambda trainer, step, during=during: during.append(signal.getsignal(signal.SIGTERM)),),
            )
            seen[before] = (during[0], signal.getsignal(signal.SIGTERM))
    finally:
        signal.signal(signal.SIGTERM, original)
    during, after = seen[signal.SIG_DFL]
    assert callable(during) and during not in (signal.SIG_DFL, signal.SIG_IGN)  # the run's own, then the default
    assert after is signal.SIG_DFL
    assert seen[previous] == (previous, previous)  # the application's handler is left in charge


@pytest.mark.slow
def test_sigterm_marks_the_run_interrupted_with_what_resume_needs(tmp_path):
    run_dir = tmp_path / "term"
    command = [sys.executable, "-m", "zoo.cli.main", "train", "vision/medical-lora", "scale=tiny"]
    command += ["train.max_steps=100000", "train.checkpoint_every=1", "--out", str(run_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # imports and the first steps, on a busy machine
        while not (run_dir / CHECKPOINT_DIR / LAST_NAME).exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signal.SIGTERM, err
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert "stopped by SIGTERM; continue with: zoo train vision/medical-lora" in out and "--resume" in out
    # what --resume needs: the resolved config and a readable checkpoint; nothing of a finished run
    assert (run_dir / "config.yaml").is_file()
    assert 0 < load(run_dir / CHECKPOINT_DIR / LAST_NAME)["progress"]["step"] < 100000
    assert not (run_dir / "adapter").exists() and not (run_dir / "README.md").exists()
