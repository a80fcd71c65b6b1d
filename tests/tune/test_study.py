"""zoo tune end to end at scale=tiny: trials are runs, the study resumes, the best recipe trains."""

import json

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from zoo.cli.main import main
from zoo.errors import ConfigError
from zoo.experiment import load_run
from zoo.experiment.config import load_config
from zoo.tune import parse_search, tune

SEARCH = ["method.r=int:2..16:log", "train.lr=float:1e-4..1e-2:log"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    result = tune("text/sst2-lora", {"scale": "tiny"}, parse_search(SEARCH), 3, folder, log=None)
    return folder, result


def _stored_trials(folder):
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    return optuna.load_study(study_name="zoo-tune", storage=storage).trials


def test_every_trial_is_a_complete_run_with_the_proposed_values(study):
    folder, result = study
    trials = _stored_trials(folder)
    assert result.finished == len(trials) == 3
    for trial in trials:
        run = load_run(trial.user_attrs["run_dir"])
        assert run.status == "complete"
        resolved = json.loads(json.dumps(run.config.to_dict(), default=str))
        assert resolved["method"]["r"] == trial.params["method.r"]
        assert resolved["train"]["lr"] == pytest.approx(trial.params["train.lr"])
        assert trial.value == pytest.approx(run.metrics("val")["accuracy"])


def test_the_best_recipe_is_the_best_trial_and_zoo_train_accepts_it(study, tmp_path, monkeypatch):
    folder, result = study
    best = max(_stored_trials(folder), key=lambda t: t.value)
    assert result.best_value == best.value
    config = load_config(result.best_recipe)
    assert config.to_dict()["method"]["r"] == result.best_params["method.r"]
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(result.best_recipe), "--out", "best"]) == 0
    assert load_run(tmp_path / "best").status == "complete"


def test_every_trial_is_a_row_of_the_studys_results_store(study):
    from zoo.results.store import ResultsStore

    folder, _ = study
    with ResultsStore(folder, create=False) as store:
        rows = store.rows()
    assert sorted(row["run_dir"] for row in rows) == sorted(t.user_attrs["run_dir"] for t in _stored_trials(folder))


def test_plots_are_written(study):
    _, result = study
    assert {p.name for p in result.plots} == {"history.png", "slices.png", "importances.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in result.plots)


def test_running_the_same_command_again_resumes_the_study(study):
    folder, _ = study
    again = tune("text/sst2-lora", {"scale": "tiny"}, parse_search(SEARCH), 3, folder, log=None)
    assert again.finished == 3 and len(_stored_trials(folder)) == 3  # nothing new to run
    more = tune("text/sst2-lora", {"scale": "tiny"}, parse_search(SEARCH), 4, folder, log=None)
    assert more.finished == 4 and len(_stored_trials(folder)) == 4


def test_another_search_in_the_same_folder_is_refused(study):
    folder, _ = study
    with pytest.raises(ConfigError, match="its own folder with --study DIR"):
        tune("text/sst2-lora", {"scale": "tiny"}, parse_search(["method.r=int:2..4"]), 5, folder, log=None)


def test_an_unknown_key_names_close_matches(tmp_path):
    with pytest.raises(ConfigError, match="lora_alpha"):
        tune("text/sst2-lora", {"scale": "tiny"}, parse_search(["method.lora_alfa=int:2..8"]), 1, tmp_path, log=None)


def test_the_cli_reads_the_recipes_search_section(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "text/sst2-lora", "scale=tiny", "--trials", "1", "--study", "s"]) == 0
    (trial,) = _stored_trials(tmp_path / "s")
    assert set(trial.params) == {"method.r", "train.lr"}  # from zoo/recipes/text/sst2-lora.yaml
    assert "1 finished" in capsys.readouterr().out


def test_a_bad_spec_on_the_command_line_prints_the_grammar(tmp_path, capsys):
    assert main(["tune", "text/sst2-lora", "scale=tiny", "--trials", "1", "--search", "method.r=int:8..2"]) == 2
    assert "KEY=int:LOW..HIGH" in capsys.readouterr().err
