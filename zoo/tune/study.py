"""``zoo tune``: hyperparameter search over a recipe with Optuna; every trial is a normal run.

TPE proposes each trial's values, from a random stream seeded by the trial's number (so an
extended study never proposes earlier trials' values again); a median pruner stops a trial at an
evaluation where its validation metric falls below the median of earlier trials at the same
step. The study lives in an Optuna journal file in the study folder (safe for many processes, on
a shared file system too), so running the same command again resumes it up to ``trials``
finished (completed or pruned) trials; failed trials and those of killed processes are retried
once (:mod:`zoo.tune.trials`), and a failure that no values would change stops the study. Each trial
is a run directory under ``trials/``, made by :func:`zoo.experiment.run` and added to the results
store of the study folder (``zoo results show --out STUDY``); the best one's
configuration is written as ``best.yaml``, a recipe that ``zoo train`` accepts, and PNG plots
show the optimisation history, the parameter importances and the metric against each
searched parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

from zoo.errors import ConfigError
from zoo.experiment.config import RunConfig, load_config, with_dotted_keys
from zoo.experiment.yaml_files import dump_yaml
from zoo.files import atomic_write_text
from zoo.tune import trials as trials_
from zoo.tune.sampler import TrialSeededSampler
from zoo.tune.space import SearchParameter

JOURNAL_FILE = "journal.log"
LOCK_FILE = "journal.lock"
BEST_RECIPE = "best.yaml"
TRIALS_DIR = "trials"


@dataclass
class TuneResult:
    study_dir: Path
    best_value: float | None
    best_params: dict[str, Any]
    best_run: Path | None
    best_recipe: Path | None
    finished: int
    pruned: int
    failed: int
    plots: list[Path]


def _metric_direction(config: RunConfig) -> tuple[str, bool]:
    """The main metric and whether greater is better, without training."""
    from zoo.tasks.heads import TASKS
    from zoo.tasks.metrics import greater_is_better

    metric = config.task.main_metric or (TASKS[config.task.kind].main_metric if config.task.kind in TASKS else None)
    if not metric:  # a domain's task kind: its builder knows its metric
        from zoo.experiment.build import build_run

        metric = build_run(config, roles=("train",)).task.main_metric
    return metric, greater_is_better(metric)


def _lowest_value(parameter: SearchParameter) -> Any:
    if parameter.kind == "choice":
        return parameter.choices[0]
    if parameter.low is None:
        raise ConfigError(f"search parameter {parameter.key} ({parameter.kind}) has no lower bound")
    return int(parameter.low) if parameter.kind == "int" else float(parameter.low)


def check_parameters(recipe: str, overrides: dict[str, Any], parameters: list[SearchParameter]) -> None:
    """Every searched key exists and takes its lowest value (the config names close matches otherwise)."""
    for parameter in parameters:
        sample = _lowest_value(parameter)
        try:
            load_config(recipe, with_dotted_keys(overrides, {parameter.key: sample}))
        except ConfigError as error:
            raise ConfigError(f"search {parameter.describe()}: {error}") from None


def default_study_dir(
    recipe: str, overrides: dict[str, Any], parameters: list[SearchParameter], recipe_parameters: list[SearchParameter]
) -> Path:
    """``tune/<recipe>`` for the recipe's own search: section as written; any other search space or
    override gets its own folder, ``tune/<recipe>-<digest of both>``, so that it never lands in
    (and is refused by) the folder of another study."""
    from zoo.experiment.runner import recipe_label

    base = Path("tune") / recipe_label(recipe)
    searched = [p.describe() for p in parameters]
    if not overrides and searched == [p.describe() for p in recipe_parameters]:
        return base
    identity = json.dumps({"overrides": overrides, "search": searched}, sort_keys=True, default=str)
    return base.with_name(f"{base.name}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}")


def _open_study(study_dir: Path, greater: bool, seed: int):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(study_dir / JOURNAL_FILE)))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created": zoo says what it opened
    try:
        return optuna.create_study(
            study_name="zoo-tune",
            storage=storage,
            load_if_exists=True,
            direction="maximize" if greater else "minimize",
            sampler=TrialSeededSampler(seed),
            pruner=optuna.pruners.MedianPruner(n_warmup_steps=0),
        )
    finally:
        optuna.logging.set_verbosity(verbosity)


def _trial_dir(study_dir: Path, trial) -> tuple[Path, bool]:
    """The run directory of a trial and whether to resume it: a retried trial carries on in its
    earlier run directory; a folder there that holds no run (a process killed while it made it)
    is removed."""
    from zoo.experiment.run_dir import is_run_dir, status
    from zoo.results.cells import RESULT_FILE

    earlier = trial.user_attrs.get(trials_.RUN_DIR)
    if earlier and trials_.RETRY_OF in trial.user_attrs:
        # by name under this study's trials/ (the study may be opened from another working directory)
        out = study_dir / TRIALS_DIR / Path(earlier).name
        if is_run_dir(out) and status(out) != "complete":
            (out / RESULT_FILE).unlink(missing_ok=True)  # the failed attempt's results row; remade at the end
            return out, True
        if out.is_dir() and not is_run_dir(out):
            shutil.rmtree(out)
            return out, False
    return study_dir / TRIALS_DIR / f"trial-{trial.number:03d}", False


def tune(
    recipe: str,
    overrides: dict[str, Any],
    parameters: list[SearchParameter],
    trials: int,
    study_dir: str | os.PathLike,
    *,
    jobs: int = 1,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> TuneResult:
    """Run trials until the study in ``study_dir`` has ``trials`` finished ones (completed or
    pruned). Failed trials do not count: each is retried once with its values. Raises
    :class:`TrialsFailing` when trials fail for a reason no other values would change."""
    import optuna
    from filelock import FileLock
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from zoo.experiment import run as run_experiment
    from zoo.experiment.run_dir import mark
    from zoo.results.store import add_runs

    say = log or (lambda _message: None)
    if not parameters:
        raise ConfigError("nothing to search: give --search KEY=SPEC or a search: section in the recipe")
    if trials < 1 or jobs < 1 or seed < 0:
        raise ConfigError(f"--trials={trials} and --jobs={jobs} must be whole numbers >= 1, --seed={seed} >= 0")
    check_parameters(recipe, overrides, parameters)
    base_config = load_config(recipe, overrides)
    metric, greater = _metric_direction(base_config)
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    with FileLock(study_dir / LOCK_FILE):  # two processes starting at once must not both retry a trial
        study = _open_study(study_dir, greater, seed)
        _check_same_study(study, study_dir, recipe, overrides, parameters, metric)
        done = len(study.get_trials(deepcopy=False, states=finished_states))
        say(
            f"study {study_dir}: {metric} ({'max' if greater else 'min'}), {done} of {trials} trials done; "
            + ", ".join(p.describe() for p in parameters)
        )
        trials_.fail_abandoned(study, say)
        if done < trials:
            trials_.queue_retries(study, {p.key for p in parameters}, say)
    failures: list[str] = []
    stop: list[BaseException] = []

    def objective(trial: optuna.Trial) -> float:
        for key, value in trials_.owner().items():
            trial.set_user_attr(key, value)
        values = {parameter.key: parameter.suggest(trial) for parameter in parameters}
        out, resume = _trial_dir(study_dir, trial)
        trial.set_user_attr(trials_.RUN_DIR, str(out))
        shown = " ".join(f"{key}={_short(value)}" for key, value in values.items())

        def report(trainer, step: int) -> None:
            history = trainer.progress.history
            if history and history[-1]["step"] == step and metric in history[-1]:
                trial.report(float(history[-1][metric]), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{metric} {history[-1][metric]:.4g} at step {step} is below the median")

        try:
            run = run_experiment(
                recipe,
                with_dotted_keys(overrides, {parameter.key: values[parameter.key] for parameter in parameters}),
                out=out,
                resume=resume,
                log=None,
                command=f"zoo tune trial {trial.number}: {shown}",
                name=f"tune/{trial.number}",
                callbacks=(report,),
            )
            value = run.metrics("val").get(metric)
            if value is None:
                raise ConfigError(f"trial {trial.number} reported no validation {metric}; the recipe needs a val split")
        except optuna.TrialPruned:
            mark(out, "pruned")
            say(f"  trial {trial.number}: {shown} -> pruned")
            raise
        except Exception as error:
            say(f"  trial {trial.number}: {shown} -> failed: {trials_.first_line(error)}")
            failures.append(trials_.first_line(error))
            same = len(failures) >= trials_.SAME_FAILURES_TO_STOP and len(set(failures)) == 1
            if isinstance(error, trials_.ENVIRONMENT_ERRORS) or same:
                stop.append(error)
                study.stop()
            raise
        finally:
            if out.exists():  # every trial, pruned and failed ones too, is a row of the study's results store
                add_runs(study_dir, [out])
        failures.clear()  # only failures in a row say that every trial would fail
        say(f"  trial {trial.number}: {shown} -> {metric} {value:.4f}")
        return float(value)

    if done < trials:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's outcome is the one line above
        try:
            study.optimize(
                objective,
                n_trials=trials - done,
                n_jobs=jobs,
                catch=(Exception,),
                callbacks=[MaxTrialsCallback(trials, states=finished_states)],  # other processes add trials too
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
    if stop:
        error = stop[0]
        why = (
            "it does not depend on the searched values"
            if isinstance(error, trials_.ENVIRONMENT_ERRORS)
            else f"{len(failures)} trials in a row failed this way"
        )
        raise trials_.TrialsFailing(
            f"stopped, as every trial would fail the same way ({why}):\n{error}\n"
            "Fix that and run the same command again: failed trials are retried."
        ) from error
    return _finish(study, study_dir, base_config, parameters, metric, say)


def _check_same_study(
    study, study_dir: Path, recipe: str, overrides: dict[str, Any], parameters: list[SearchParameter], metric: str
) -> None:
    """A study folder belongs to one recipe and search space; resuming another would mix trials."""
    identity = {
        "recipe": recipe,
        "overrides": overrides,
        "search": [p.describe() for p in parameters],
        "metric": metric,
    }
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", json.loads(json.dumps(identity, default=str)))
    elif stored != json.loads(json.dumps(identity, default=str)):
        raise ConfigError(
            f"{study_dir} holds a study of {stored['recipe']} searching {', '.join(stored['search'])} "
            f"with overrides {stored['overrides'] or 'none'}; give this search its own folder with --study DIR"
        )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finish(study, study_dir: Path, base_config: RunConfig, parameters, metric: str, say) -> TuneResult:
    import optuna

    from zoo.experiment.run_dir import read_config

    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_run = best_recipe = None
    best_value, best_params = None, {}
    if complete:
        best = study.best_trial
        best_value, best_params = best.value, dict(best.params)
        best_run = Path(best.user_attrs["run_dir"])
        data = read_config(best_run).to_dict()
        shown = ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in best_params.items()
        )
        data["description"] = f"best trial of zoo tune ({shown}); was: {data.get('description') or 'no description'}"
        best_recipe = study_dir / BEST_RECIPE
        header = (
            f"# Best of {len(complete)} finished trials of zoo tune ({metric} {best_value:.4f} on val, "
            f"trial {best.number}: {best_run}).\n# Train it with: zoo train {best_recipe}\n"
        )
        atomic_write_text(best_recipe, header + dump_yaml(data))
        say(f"best: trial {best.number}, {metric} {best_value:.4f}, {shown}; train it with: zoo train {best_recipe}")
    plots = _plots(study, study_dir, parameters) if len(complete) >= 2 else []
    return TuneResult(
        study_dir,
        best_value,
        best_params,
        best_run,
        best_recipe,
        finished=len(complete),
        pruned=states.count(optuna.trial.TrialState.PRUNED),
        failed=states.count(optuna.trial.TrialState.FAIL),
        plots=plots,
    )


def _plots(study, study_dir: Path, parameters: list[SearchParameter]) -> list[Path]:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    drawings = [
        ("history.png", lambda: optuna_plots.plot_optimization_history(study)),
        ("slices.png", lambda: optuna_plots.plot_slice(study)),
    ]
    if len(parameters) > 1:
        drawings.append(("importances.png", lambda: optuna_plots.plot_param_importances(study)))
    for name, draw in drawings:
        with warnings.catch_warnings():  # optuna marks its matplotlib plots experimental; they are what we need
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            axes = draw()
            # optuna draws each plot on a new top-level figure (never a subfigure)
            figure = cast(Figure, (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure())
            figure.tight_layout()
        path = study_dir / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
