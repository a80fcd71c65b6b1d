"""An experiment is one call: ``run(recipe, overrides, out=...) -> Run``; ``load_run(dir)`` reads one back.

``zoo train`` is a thin shell over :func:`run`, and so are the tools built on runs (result
tables, the hub, tuning). The order keeps bad input cheap and nothing half-written: the
recipe and overrides are validated, the data and the backbone loaded, the method applied,
and only then is the run directory created. The trainer writes metrics, TensorBoard events
and checkpoints while it runs; the adapter, evaluation results and model card are written
at the end, and ``run.json`` last: the whole run record (:mod:`zoo.experiment.record`: what ran,
on which weights and data, with what result), taken while the model and the data are in memory,
so that nothing that reads a run (the card, ``zoo push``, ``zoo info``, the results store) builds
or reads them again.

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
from typing import Any, Callable, Iterator, Sequence

from zoo.errors import ConfigError
from zoo.experiment import run_dir as runs
from zoo.experiment.config import RunConfig, load_run_configs
from zoo.experiment.record import RunRecord
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
    record: RunRecord = field(default_factory=RunRecord)
    """``run.json`` (:class:`zoo.experiment.record.RunRecord`): status, command, timings and, once the run
    is complete, what it trained on, its fingerprint, parameter counts and metrics."""
    results: dict[str, Any] = field(default_factory=dict)
    """``eval_results.json``: per split, ``{"metrics": {...}, "step": ..., "note": ...}`` (with ``zoo eval``'s)."""

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def recipe(self) -> str | None:
        return self.record.recipe

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
        return Run(run_dir, runs.read_config(run_dir), runs.read_record(run_dir), results)
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
    record = runs.read_record(run_dir)
    pid = record.pid
    if record.status != "running" or record.host != socket.gethostname() or not pid or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def run(
    recipe: str | os.PathLike | RunConfig,
    overrides: Sequence[str] | dict[str, Any] = (),
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
    from zoo.experiment.fingerprint import base_weights_fingerprint
    from zoo.experiment.model_card import described_changes
    from zoo.train import Trainer
    from zoo.train.memory import peak_memory, reset_peak_memory
    from zoo.train.task import dataset_size

    built = build_run(config)
    privacy = None
    if config.train.privacy is not None:  # a target that cannot be met is refused before the run directory is made
        from zoo.train.privacy import check_private_run

        privacy = check_private_run(config.train, dataset_size(built.datasets["train"]), built.resolved.task_kind)
    report = zp.parameter_report(built.model)
    fingerprint = None
    if main:
        # the base weights as built, before training changes anything (full fine-tuning changes them all)
        backbone = getattr(built.model, "backbone", None)
        fingerprint = base_weights_fingerprint(backbone) if backbone is not None else None
        sizes = ", ".join(f"{role} {dataset_size(dataset)}" for role, dataset in built.datasets.items())
        say(
            f"{label}{' (scale=tiny)' if config.tiny else ''}: {config.method.name} on {config.backbone.name}, "
            f"{config.data.name} ({sizes})"
        )
        say(f"  {report}")
        if privacy is not None:
            say(f"  {privacy}")
        say(f"  run directory: {run_dir}{' (resuming)' if resume else ''}")
        runs.start(run_dir, config, label, command, resume)
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
            from zoo.experiment.predictions import recording_outputs

            test_metrics, outputs = None, None
            if "test" in built.datasets:
                with recording_outputs(built.task) as captured:  # row by row, for paired tests over test rows
                    test_metrics = trainer.evaluate(built.datasets["test"])
                outputs = ("test", captured.predictions())
            elif "val" in built.datasets and result.best_metrics and config.train.load_best_at_end:
                # no test split: results report validation at the best step, whose weights these are
                with recording_outputs(built.task) as captured:
                    trainer.evaluate(built.datasets["val"])
                outputs = ("val", captured.predictions())
            with trainer.full_weights():  # whole tensors on rank 0 under FSDP; every process must enter
                if main:
                    _finish(
                        run_dir,
                        built,
                        report,
                        result,
                        test_metrics,
                        described_changes(original, config),
                        say,
                        memory,
                        fingerprint,
                        can_forward=not getattr(trainer, "fsdp", False),
                        outputs=outputs,
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


def _finish(
    run_dir, built, report, result, test_metrics, changed, say, memory, fingerprint, can_forward=True, outputs=None
) -> None:
    """Write the adapter, eval_results.json, predictions/<split>.npz (``outputs``: split and its predictions), the
    model card, and run.json's whole record (last)."""
    import zoo.peft as zp
    from zoo.experiment.model_card import model_card
    from zoo.experiment.record import ReferenceOutputs, finished_record
    from zoo.experiment.reference import reference_outputs

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
    if outputs is not None and outputs[1] is not None:
        from zoo.experiment.predictions import write_predictions

        write_predictions(run_dir, *outputs)
    if not can_forward:  # under FSDP rank 0 holds whole tensors for reading only
        reference = ReferenceOutputs(note="not taken: a strategy=fsdp run holds no whole model to run")
    else:
        try:
            reference = reference_outputs(built.model, built.datasets, built.resolved.input_transform)
        except Exception as error:  # a model whose forward needs more than inputs (generation): none stored
            reference = ReferenceOutputs(note=f"the model could not be run on held-out inputs ({error})")
    record = finished_record(
        runs.read_record(run_dir),
        built,
        report,
        result,
        results,
        fingerprint=fingerprint,
        reference=reference,
        changed=changed,
        finished=runs.now(),
        memory=memory,
    )
    atomic_write_text(run_dir / runs.CARD_FILE, model_card(config, record, run_dir))
    runs.write_record(run_dir, record)  # complete, and only now
    for split, entry in results.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in entry["metrics"].items() if isinstance(v, (int, float)))
        say(f"{split}: {shown}")
    say(f"done: {run_dir} (model card {run_dir / runs.CARD_FILE})")
