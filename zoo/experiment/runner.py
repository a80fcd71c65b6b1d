"""An experiment is one call: ``run(recipe, overrides, out=...) -> Run``; ``load_run(dir)`` reads one back.

``zoo train`` is a thin shell over :func:`run`, and so are the tools built on runs (result
tables, the hub, tuning). The order keeps bad input cheap and nothing half-written: the
recipe and overrides are validated, the data and the backbone loaded, the method applied,
and only then is the run directory created. The trainer writes metrics, TensorBoard events
and checkpoints while it runs; the adapter, evaluation results and model card are written
at the end, and ``run.json`` says ``complete`` last.

Under torchrun every process calls :func:`run` with the same arguments and the same ``out``;
only rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from zoo.errors import ConfigError
from zoo.experiment import run_dir as runs
from zoo.experiment.config import RunConfig, load_run_configs
from zoo.files import atomic_write_text


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run; ``run_dir`` (marked ``interrupted``) resumes with ``resume=True``.

    ``signal`` is the signal that stopped it (``signal.SIGINT`` for Ctrl-C)."""

    def __init__(self, run_dir: Path | None, signal_number: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted: {run_dir}")
        self.run_dir = run_dir
        self.signal = signal.Signals(signal_number)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so that it unwinds as Ctrl-C does."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's time limit, ``docker stop``) ends a run as Ctrl-C does: the run
    is marked ``interrupted`` and resumes from its last checkpoint. The previous handler is put back.

    Only where SIGTERM has its default action: a program that installed its own handler (submitit's
    Slurm jobs let SIGTERM pass and requeue on SIGUSR2) or ignores it has decided what it means."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signal_number, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class Run:
    """A run directory read back: what ran, how far it got, and its results."""

    dir: Path
    config: RunConfig
    record: dict[str, Any] = field(default_factory=dict)
    """``run.json``: status, recipe, command, timings, parameter counts."""
    results: dict[str, Any] = field(default_factory=dict)
    """``eval_results.json``: per split, ``{"metrics": {...}, "step": ..., "note": ...}``."""

    @property
    def status(self) -> str:
        return self.record.get("status", "unknown")

    @property
    def recipe(self) -> str | None:
        return self.record.get("recipe")

    def metrics(self, split: str = "test") -> dict[str, float]:
        """The metrics measured on ``split`` (``val``: at the best step), or {} when there are none."""
        return dict(self.results.get(split, {}).get("metrics", {}))

    def build(self, roles: tuple[str, ...] = ()):
        """The backbone rebuilt from ``config.yaml`` with ``adapter/`` loaded (a ``BuiltRun``), and the
        datasets of ``roles``."""
        from zoo.experiment.build import load_built_run

        return load_built_run(self.dir, roles)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run directory (any status), or a published adapter's folder (``zoo pull`` puts one in the
    cache; a hub folder holds one per version): its ``config.yaml``, ``adapter/`` and metrics, with the
    index entry as its record, and ``status`` complete. A folder that is neither is a clear error.

    ``.build()`` of a published adapter finds the base weights as its ``config.yaml`` says
    (``pretrained: true``: the installed package, else the cache); ``zoo.hub.load(NAME)`` also checks
    them against the entry's fingerprint and predicts with class names."""
    run_dir = Path(run_dir)
    results = runs.read_json(run_dir / runs.EVAL_FILE) if (run_dir / runs.EVAL_FILE).is_file() else {}
    if runs.is_run_dir(run_dir):
        return Run(run_dir, runs.read_config(run_dir), runs.read_json(run_dir / runs.RUN_FILE), results)
    if runs.is_published_adapter(run_dir):
        return Run(run_dir, runs.read_config(run_dir), runs.published_record(run_dir), results)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} does not exist; zoo.load_run reads a run directory made by zoo train")
    raise FileNotFoundError(
        f"{run_dir} is not a run directory (no {runs.CONFIG_FILE} and {runs.RUN_FILE}) nor a published adapter "
        f"({runs.CONFIG_FILE} and {runs.ADAPTER_DIR}/); for an adapter of a hub use zoo.hub.load(NAME) or zoo pull NAME"
    )


def recipe_label(recipe: str | os.PathLike) -> str:
    """The recipe's name under the recipes folder, else the file's stem."""
    from zoo.experiment.recipes import find_recipe, recipes_root

    path = find_recipe(recipe).resolve()
    try:
        return path.relative_to(recipes_root().resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def still_running(run_dir: Path) -> int | None:
    """The pid of another live process of this machine that is training ``run_dir``, if any."""
    record = runs.read_json(run_dir / runs.RUN_FILE)
    pid = record.get("pid")
    if record.get("status") != "running" or record.get("host") != socket.gethostname() or not pid or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def run(
    recipe: str | os.PathLike | RunConfig,
    overrides: list[str] | dict[str, Any] = (),
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    command: str | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = print,
    callbacks: tuple[Callable[[Any, int], None], ...] = (),
) -> Run:
    """Train and evaluate one recipe (a name, a YAML path, or a ``RunConfig``) and return its run.

    ``out`` is the run directory (default ``runs/<recipe>``, numbered when taken); ``resume``
    carries an interrupted run on from its newest readable checkpoint (a complete run is returned
    as it is); ``command`` is what the model card records as the command that made it (default:
    the equivalent ``zoo train``); ``name`` labels a ``RunConfig`` given directly; ``log=None``
    prints nothing, training progress included (otherwise a bar on a terminal, a line every
    ``train.log_every`` steps on stderr elsewhere); ``callbacks`` are handed to the trainer
    (``callback(trainer, step)`` after every optimizer step; hyperparameter search prunes through
    one). Ctrl-C or SIGTERM marks the run ``interrupted`` and raises :class:`RunInterrupted` (a
    KeyboardInterrupt naming the run directory); any other error (a diverged loss included:
    ``zoo.train.divergence.TrainingDiverged``) marks it ``failed`` with the error and is raised again.
    """
    from zoo.train import is_main_process

    if isinstance(recipe, RunConfig):
        config, label, original = recipe, name or "config", recipe
    else:
        # with the recipe as written (at the same scale), to tell whether its description still fits the run
        config, original = load_run_configs(recipe, overrides)
        label = name or recipe_label(recipe)
    if command is None:
        shown = (
            " ".join(overrides)
            if not isinstance(overrides, dict)
            else " ".join(f"{k}={v}" for k, v in overrides.items())
        )
        command = f"zoo train {label}" + (f" {shown}" if shown else "") + (f" --out {out}" if out else "")
    say = log if (log is not None and is_main_process()) else (lambda _message: None)
    main = is_main_process()
    out_path = Path(out) if out is not None else None
    if main:
        run_dir = runs.choose_run_dir(out_path, label, config, resume)
    elif out_path is None:
        raise ConfigError("every process of a multi-process run needs the same out= (zoo train --nproc passes it)")
    else:
        run_dir = out_path
    if main and resume:
        runs.check_resume_config(run_dir, config)
        if runs.status(run_dir) == "complete":
            say(f"{run_dir} is already complete; nothing to resume (zoo info {run_dir})")
            return load_run(run_dir)
        if (pid := still_running(run_dir)) is not None:
            raise ConfigError(f"--resume: {run_dir} is still being trained by process {pid} on this machine")
    _train(config, original, label, run_dir, command, resume, say, main, callbacks, show_progress=log is not None)
    return load_run(run_dir) if main else Run(run_dir, config)


def _train(config, original, label, run_dir, command, resume, say, main, callbacks=(), show_progress=True) -> None:
    import zoo.peft as zp
    from zoo.experiment.build import build_run
    from zoo.experiment.model_card import described_changes
    from zoo.train import Trainer
    from zoo.train.memory import peak_memory, reset_peak_memory

    built = build_run(config)
    report = zp.parameter_report(built.model)
    if main:
        sizes = ", ".join(f"{role} {len(dataset)}" for role, dataset in built.datasets.items())
        say(
            f"{label}{' (scale=tiny)' if config.tiny else ''}: {config.method.name} on {config.backbone.name}, "
            f"{config.data.name} ({sizes})"
        )
        say(f"  {report}")
        say(f"  run directory: {run_dir}{' (resuming)' if resume else ''}")
        runs.start(run_dir, config, label, command, resume)
        outputs = getattr(getattr(built.model, "head", None), "out_features", None)
        runs.mark(
            run_dir,
            "running",
            num_outputs=outputs,
            data_dir=str(built.data_dir) if built.data_dir else None,
            layer_selection=built.layer_selection,
        )
        if built.layer_selection:
            selection = built.layer_selection
            shown = ", ".join(f"{i}: {score:.3g}" for i, score in enumerate(selection["importance"]))
            say(f"  layers={selection['rule']}: block importance {shown}; training blocks {selection['chosen']}")

    # Until run.json says complete, any way out of here says why: interrupted (resumable) or failed.
    with _terminate_as_interrupt():
        try:
            trainer = Trainer(
                built.model,
                built.task,
                built.datasets["train"],
                built.datasets.get("val"),
                config.train_settings(),
                run_dir,
                callbacks=callbacks,
                show_progress=show_progress,
            )
            reset_worked = reset_peak_memory()
            result = trainer.fit(resume=resume)
            memory = peak_memory(trainer.device, reset_worked)
            if trainer.resumed_from is not None:
                say(f"  resumed from {trainer.resumed_from}")
            test_metrics = trainer.evaluate(built.datasets["test"]) if "test" in built.datasets else None
            with trainer.full_weights():  # whole tensors on rank 0 under FSDP; every process must enter
                if main:
                    _finish(
                        run_dir,
                        built,
                        label,
                        command,
                        report,
                        result,
                        test_metrics,
                        described_changes(original, config),
                        say,
                        memory,
                    )
        except KeyboardInterrupt as interrupt:
            if main and runs.status(run_dir) != "complete":  # not when it came after the last line was written
                runs.mark(run_dir, "interrupted")
            signal_number = signal.SIGTERM if isinstance(interrupt, _Terminated) else signal.SIGINT
            raise RunInterrupted(run_dir if main else None, signal_number) from None
        except BaseException as error:
            if main and runs.status(run_dir) != "complete":
                runs.mark(run_dir, "failed", error=f"{type(error).__name__}: {error}")
            raise


def _finish(run_dir, built, label, command, report, result, test_metrics, changed, say, memory=None) -> None:
    import zoo.peft as zp
    from zoo.experiment.model_card import model_card

    config = built.config
    zp.save_adapter(built.model, run_dir / runs.ADAPTER_DIR)
    results = {}
    if result.best_metrics:
        results["val"] = {
            "metrics": result.best_metrics,
            "step": result.best_step,
            "note": f"best step {result.best_step}",
        }
    if test_metrics is not None:
        weights = (
            "best validation checkpoint" if (config.train.load_best_at_end and result.best_metrics) else "final weights"
        )
        results["test"] = {
            "metrics": test_metrics,
            "step": result.best_step if "best" in weights else result.steps,
            "note": weights,
        }
    runs.write_json(run_dir / runs.EVAL_FILE, results)
    training = {
        "steps": result.steps,
        "epochs": result.epochs,
        "stopped_early": result.stopped_early,
        "seconds": result.train_seconds,
    }
    card = model_card(
        recipe=label,
        command=command,
        config=config,
        backbone_spec=built.resolved.backbone,
        dataset_spec=built.resolved.dataset,
        task_kind=built.resolved.task_kind,
        main_metric=built.task.main_metric,
        report=report,
        results=results,
        training=training,
        data_dir=built.data_dir,
        run_dir=run_dir,
        sources=built.sources,
        rows_used={role: len(dataset) for role, dataset in built.datasets.items()},
        changed=list(changed),
    )
    atomic_write_text(run_dir / runs.CARD_FILE, card)
    runs.mark(
        run_dir,
        "complete",
        finished=runs.now(),
        steps=result.steps,
        main_metric=built.task.main_metric,
        best_metric=result.best_metric,
        best_step=result.best_step,
        trainable_parameters=report.trainable,
        total_parameters=report.total,
        epochs=result.epochs,
        stopped_early=result.stopped_early,
        train_seconds=round(result.train_seconds, 3),
        **(memory or {}),
        data={
            "name": config.data.name,
            "splits": {
                role: {"rows_used": len(dataset), **_source(built.sources.get(role))}
                for role, dataset in built.datasets.items()
            },
        },
    )
    for split, entry in results.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in entry["metrics"].items() if isinstance(v, (int, float)))
        say(f"{split}: {shown}")
    say(f"done: {run_dir} (model card {run_dir / runs.CARD_FILE})")


def _source(source) -> dict[str, Any]:
    """What run.json keeps of a split's source: the file, its rows and checksum (for the results store)."""
    if source is None:
        return {}
    return {"rows": source.rows, "file": str(source.file) if source.file else None, "sha256": source.sha256}
