"""zoo tune resumed, extended, killed and rerun: no trial's values twice, no trial RUNNING for ever,
failed trials retried, and failures that no values would change stop the study at once."""

import json
import socket
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from zoo.cli.main import main
from zoo.experiment import load_run
from zoo.tune import TrialsFailing, default_study_dir, parse_search, tune
from zoo.tune.sampler import TrialSeededSampler

SEARCH = ["method.r=int:2..16:log", "train.lr=float:1e-4..1e-2:log"]
RECIPE_SEARCH = {"method.r": "int:2..64:log", "train.lr": "float:1e-5..1e-2:log"}  # zoo/recipes/text/sst2-lora.yaml
TINY = {"scale": "tiny"}


def _trials(folder):
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    return optuna.load_study(study_name="zoo-tune", storage=storage).trials


def _values(trials):
    return [tuple(sorted(trial.params.items())) for trial in trials]


@pytest.mark.slow
def test_an_extended_study_proposes_what_one_uninterrupted_study_proposes(tmp_path):
    extended, straight = tmp_path / "extended", tmp_path / "straight"
    tune("text/sst2-lora", TINY, parse_search(SEARCH), 2, extended, log=None)
    tune("text/sst2-lora", TINY, parse_search(SEARCH), 4, extended, log=None)
    tune("text/sst2-lora", TINY, parse_search(SEARCH), 4, straight, log=None)
    values = _values(_trials(extended))
    assert len(values) == 4 and len(set(values)) == 4  # trials 2 and 3 are not trials 0 and 1 again
    assert values == _values(_trials(straight))
    assert all(trial.state == TrialState.COMPLETE for trial in _trials(extended))


def test_the_sampler_resumed_past_its_random_startup_matches_one_uninterrupted_study():
    """Past TPE's 10 random startup trials too, a study run in two goes equals one run in one go."""

    def objective(trial):
        return (trial.suggest_float("x", -3, 3) - 1) ** 2 + trial.suggest_int("n", 1, 9)

    def study(storage):
        return optuna.create_study(study_name="s", storage=storage, load_if_exists=True, sampler=TrialSeededSampler(7))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    once, twice = optuna.storages.InMemoryStorage(), optuna.storages.InMemoryStorage()
    study(once).optimize(objective, n_trials=14)
    study(twice).optimize(objective, n_trials=6)
    study(twice).optimize(objective, n_trials=8)  # a new sampler object, as a new process makes
    in_one, in_two = study(once).trials, study(twice).trials
    assert [t.params for t in in_one] == [t.params for t in in_two]
    assert len({tuple(t.params.items()) for t in in_two}) == 14


SIGNALLED_TUNE = textwrap.dedent(
    """
    import os, signal, sys
    import zoo.experiment
    from zoo.cli.main import main

    train = zoo.experiment.run

    def signalled_at_step_2(*args, callbacks=(), **kwargs):
        def send(trainer, step):
            if step == 2:  # after step 2's checkpoint
                os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return train(*args, callbacks=(*callbacks, send), **kwargs)

    zoo.experiment.run = signalled_at_step_2
    sys.exit(main(sys.argv[2:]))
    """
)
STUDY_OF_ONE = ["tune", "text/sst2-lora", "scale=tiny", "train.checkpoint_every=1", "--trials", "1", "--study"]


@pytest.mark.slow
def test_a_trial_of_a_killed_process_is_failed_and_its_run_resumed_on_the_next_start(tmp_path):
    folder = tmp_path / "study"
    command = [*STUDY_OF_ONE, str(folder)]
    killed = subprocess.run([sys.executable, "-c", SIGNALLED_TUNE, "SIGKILL", *command], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr  # as kill -9 leaves it
    (left,) = _trials(folder)
    assert left.state == TrialState.RUNNING  # what a killed process leaves in the journal
    run_dir = left.user_attrs["run_dir"]
    started = json.loads((folder / "trials" / "trial-000" / "run.json").read_text())
    assert run_dir == str(folder / "trials" / "trial-000") and started["status"] == "running"

    said = []
    overrides = {"scale": "tiny", "train": {"checkpoint_every": 1}}
    result = tune("text/sst2-lora", overrides, parse_search(RECIPE_SEARCH), 1, folder, log=said.append)
    first, retry = _trials(folder)
    assert first.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE and retry.params == first.params
    assert retry.user_attrs["run_dir"] == run_dir  # carried on in the killed trial's run directory
    run = load_run(run_dir)
    assert run.status == "complete" and run.record.started == started["started"]
    assert result.finished == 1 and str(result.best_run) == run_dir
    assert any("trial 0" in line and "gone" in line for line in said)


def test_a_half_made_run_directory_of_a_killed_trial_is_cleaned_and_the_trial_run_again(tmp_path):
    """The journal as a process leaves it when killed after making its trial folder, before the run's files."""
    folder = tmp_path / "study"
    folder.mkdir()
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    study = optuna.create_study(study_name="zoo-tune", storage=storage, direction="maximize")
    left = study.ask()
    values = {"method.r": left.suggest_int("method.r", 2, 64, log=True)}
    values["train.lr"] = left.suggest_float("train.lr", 1e-5, 1e-2, log=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    half_made = folder / "trials" / "trial-000"
    half_made.mkdir(parents=True)
    (half_made / "config.yaml.tmp").write_text("partial")
    for key, value in {"host": socket.gethostname(), "pid": int(gone.stdout), "run_dir": str(half_made)}.items():
        left.set_user_attr(key, value)

    result = tune("text/sst2-lora", TINY, parse_search(RECIPE_SEARCH), 1, folder, log=None)
    first, retry = _trials(folder)
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert retry.params == values and result.finished == 1
    assert load_run(half_made).status == "complete" and not (half_made / "config.yaml.tmp").exists()


@pytest.mark.slow
def test_a_stopped_study_says_so_in_one_line_and_the_same_command_resumes_it(tmp_path, capsys):
    folder = tmp_path / "study"
    command = [*STUDY_OF_ONE, str(folder)]
    stopped = subprocess.run(
        [sys.executable, "-c", SIGNALLED_TUNE, "SIGTERM", *command], capture_output=True, text=True
    )
    assert stopped.returncode == 128 + 15, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert f"stopped by SIGTERM in {folder}/trials/trial-000; the same command resumes" in stopped.stderr
    started = json.loads((folder / "trials" / "trial-000" / "run.json").read_text())
    assert started["status"] == "interrupted"
    assert main(command) == 0
    first, retry = _trials(folder)
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE) and retry.params == first.params
    assert load_run(folder / "trials" / "trial-000").record.started == started["started"]


def test_a_trial_of_a_live_process_is_left_running(tmp_path):
    folder = tmp_path / "study"
    tune("text/sst2-lora", TINY, parse_search(SEARCH), 1, folder, log=None)
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    study = optuna.load_study(study_name="zoo-tune", storage=storage)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as other:
        try:
            running = study.ask()
            running.set_user_attr("host", socket.gethostname())
            running.set_user_attr("pid", other.pid)
            tune("text/sst2-lora", TINY, parse_search(SEARCH), 2, folder, log=None)
            assert [t.state for t in _trials(folder)] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE]
        finally:
            other.kill()
    tune("text/sst2-lora", TINY, parse_search(SEARCH), 2, folder, log=None)  # now its process is gone
    assert _trials(folder)[1].state == TrialState.FAIL


@pytest.mark.slow
def test_failed_trials_do_not_count_and_a_rerun_retries_them(tmp_path, monkeypatch, capfd):
    import zoo.experiment

    folder, train, calls = tmp_path / "study", zoo.experiment.run, []

    def second_trial_fails(*args, **kwargs):
        calls.append(kwargs["out"])
        if len(calls) == 2:
            raise RuntimeError("No space left on device\nwhile writing a checkpoint")
        return train(*args, **kwargs)

    monkeypatch.setattr(zoo.experiment, "run", second_trial_fails)
    said = []
    first = tune("text/sst2-lora", TINY, parse_search(SEARCH), 2, folder, log=said.append)
    assert first.finished == 1 and first.failed == 1
    failures = [line for line in said if "-> failed" in line]
    assert failures == [failures[0]] and failures[0].endswith("-> failed: RuntimeError: No space left on device")
    assert "Traceback" not in capfd.readouterr().err

    monkeypatch.setattr(zoo.experiment, "run", train)
    again = tune("text/sst2-lora", TINY, parse_search(SEARCH), 2, folder, log=None)
    assert again.finished == 2
    ok, failed, retry = _trials(folder)
    assert [ok.state, failed.state, retry.state] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert retry.params == failed.params
    assert tune("text/sst2-lora", TINY, parse_search(SEARCH), 2, folder, log=None).finished == 2
    assert len(_trials(folder)) == 3  # done: nothing more runs


def test_an_offline_failure_stops_the_study_with_one_message(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    command = ["tune", "text/sst2-lora", "data.root=empty", "data.download=false", "--trials", "20", "--study", "s"]
    assert main(command) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert [line for line in out.splitlines() if "-> failed" in line] == [
        next(line for line in out.splitlines() if line.startswith("  trial 0:"))
    ]
    assert "sst2/train.tsv is missing" in out.splitlines()[1]
    assert err.startswith("zoo tune: error: stopped, as every trial would fail the same way")
    assert err.count("sst2/train.tsv is missing") == 1
    assert [t.state for t in _trials(tmp_path / "s")] == [TrialState.FAIL]  # not 20 failures

    assert main(command) == 1  # failed trials do not count: the rerun retries trial 0's values, once
    assert main(command) == 1  # then TPE proposes new ones
    first, retry, new = _trials(tmp_path / "s")
    assert retry.params == first.params and new.params != first.params
    assert {t.state for t in (first, retry, new)} == {TrialState.FAIL}


def test_trials_failing_the_same_way_in_a_row_stop_the_study(tmp_path, monkeypatch, capfd):
    import zoo.experiment

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(zoo.experiment, "run", out_of_memory)
    with pytest.raises(TrialsFailing, match="3 trials in a row failed this way"):
        tune("text/sst2-lora", TINY, parse_search(SEARCH), 20, tmp_path, log=None)
    assert [t.state for t in _trials(tmp_path)] == [TrialState.FAIL] * 3  # not 20
    assert "Traceback" not in capfd.readouterr().err


def test_the_default_study_folder_depends_on_the_search_and_the_overrides():
    recipe = parse_search({"method.r": "int:2..64:log", "train.lr": "float:1e-5..1e-2:log"})
    other = parse_search(["method.r=int:2..4"])
    assert default_study_dir("text/sst2-lora", {}, recipe, recipe).as_posix() == "tune/text/sst2-lora"
    tiny = default_study_dir("text/sst2-lora", TINY, recipe, recipe)
    searched = default_study_dir("text/sst2-lora", {}, other, recipe)
    assert len({tiny, searched, default_study_dir("text/sst2-lora", {}, recipe, recipe)}) == 3
    assert tiny.parent.as_posix() == "tune/text" and tiny.name.startswith("sst2-lora-")
    assert default_study_dir("text/sst2-lora", TINY, recipe, recipe) == tiny  # the same command resumes


def test_a_second_search_without_study_gets_its_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "text/sst2-lora", "scale=tiny", "--trials", "1"]) == 0
    assert main(["tune", "text/sst2-lora", "scale=tiny", "--trials", "1", "--search", "method.r=int:2..4"]) == 0
    folders = sorted(p.parent for p in tmp_path.glob("tune/text/*/best.yaml"))
    assert len(folders) == 2
    out = capsys.readouterr().out
    for folder in folders:
        assert f"zoo train {folder.relative_to(tmp_path)}/best.yaml" in out
