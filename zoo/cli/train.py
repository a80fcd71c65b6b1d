"""``zoo train RECIPE [key=value ...] [--out DIR] [--resume] [--nproc N]``: train a recipe.

The recipe and overrides are validated, the data and the backbone loaded, the method
applied, and only then is the run directory created (so a failed start leaves nothing
behind). The trainer writes metrics, TensorBoard events and checkpoints while it runs; the
adapter, evaluation results and model card are written at the end, and ``run.json`` says
``complete`` last. ``--resume`` carries an interrupted run on from its last checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a recipe (zoo ls recipes)",
        description="Train a recipe. Overrides reach any key: method.r=16 train.lr=3e-4 data.root=/data scale=tiny",
    )
    parser.add_argument("recipe", help="a recipe name (vision/medical-lora) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.lr=3e-4 method.r=16 scale=tiny")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory (default runs/<recipe>, runs/tiny/<recipe> at scale=tiny; -2, -3... if taken)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--nproc", type=int, default=1, help="processes (DDP through torchrun; GPUs or CPU with gloo)")
    parser.set_defaults(run=run, accepts_overrides=True)


def recipe_label(recipe: str) -> str:
    """The recipe's name under the recipes folder, else the file's stem."""
    from zoo.recipes import find_recipe, recipes_root

    path = find_recipe(recipe).resolve()
    try:
        return path.relative_to(recipes_root().resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def _still_running(run_dir: Path) -> int | None:
    import socket

    from zoo.run_dir import RUN_FILE, read_json

    record = read_json(run_dir / RUN_FILE)
    pid = record.get("pid")
    if record.get("status") != "running" or record.get("host") != socket.gethostname() or not pid or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def _launch(args: argparse.Namespace, run_dir: Path) -> int:
    from zoo.train import launch

    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            argv.append(item)
    if args.out is None:  # every process must use the folder this one chose
        argv += ["--out", str(run_dir)]
    # The processes record the command as typed, --nproc included (they see it without).
    previous = os.environ.get("ZOO_COMMAND")
    os.environ["ZOO_COMMAND"] = args.command_line
    try:
        return launch(args.nproc, argv)
    finally:
        if previous is None:
            os.environ.pop("ZOO_COMMAND", None)
        else:
            os.environ["ZOO_COMMAND"] = previous


def run(args: argparse.Namespace) -> int:
    import zoo.peft as zp
    from zoo import run_dir as runs
    from zoo.build import build_run
    from zoo.config import ConfigError, load_config
    from zoo.model_card import described_changes
    from zoo.train import Trainer, is_main_process
    from zoo.train.distributed import launched_by_torchrun

    if args.nproc < 1:
        raise ConfigError(f"--nproc={args.nproc} must be a whole number >= 1")
    config = load_config(args.recipe, args.overrides)
    recipe = recipe_label(args.recipe)
    main = is_main_process()
    if args.nproc > 1 and not launched_by_torchrun():
        run_dir = runs.choose_run_dir(args.out, recipe, config, args.resume)
        if args.resume:
            runs.check_resume_config(run_dir, config)
        return _launch(args, run_dir)
    run_dir = runs.choose_run_dir(args.out, recipe, config, args.resume) if main else Path(args.out)
    if main and args.resume:
        runs.check_resume_config(run_dir, config)
        if runs.status(run_dir) == "complete":
            print(f"{run_dir} is already complete; nothing to resume (zoo info {run_dir})")
            return 0
        if (pid := _still_running(run_dir)) is not None:
            raise ConfigError(f"--resume: {run_dir} is still being trained by process {pid} on this machine")

    built = build_run(config)
    report = zp.parameter_report(built.model)
    settings = config.train_settings()
    if main:
        sizes = ", ".join(f"{role} {len(dataset)}" for role, dataset in built.datasets.items())
        print(f"{recipe}{' (scale=tiny)' if config.tiny else ''}: {config.method.name} on {config.backbone.name}, "
              f"{config.data.name} ({sizes})")
        print(f"  {report}")
        print(f"  run directory: {run_dir}{' (resuming)' if args.resume else ''}")
        runs.start(run_dir, config, recipe, args.command_line, args.resume)
        outputs = getattr(getattr(built.model, "head", None), "out_features", None)
        runs.mark(run_dir, "running", num_outputs=outputs, data_dir=str(built.data_dir) if built.data_dir else None)

    trainer = Trainer(built.model, built.task, built.datasets["train"], built.datasets.get("val"), settings, run_dir)
    try:
        result = trainer.fit(resume=args.resume)
        if main and trainer.resumed_from is not None:
            print(f"  resumed from {trainer.resumed_from}")
        test_metrics = trainer.evaluate(built.datasets["test"]) if "test" in built.datasets else None
    except KeyboardInterrupt:
        if main:
            runs.mark(run_dir, "interrupted")
            print(f"\ninterrupted; continue with: {runs.resume_command(args.command_line, run_dir)}")
        return 130
    except BaseException as error:
        if main:
            runs.mark(run_dir, "failed", error=f"{type(error).__name__}: {error}")
        raise
    with trainer.full_weights():  # whole tensors on rank 0 under FSDP; every process must enter
        if main:
            # The recipe as written (at the same scale), to tell whether its description still fits the run.
            scale = [item for item in args.overrides if item.partition("=")[0].strip() == "scale"]
            changed = described_changes(load_config(args.recipe, scale), config)
            finish(run_dir, built, recipe, args.command_line, report, result, test_metrics, changed)
    return 0


def finish(run_dir, built, recipe, command, report, result, test_metrics, changed=()) -> None:
    import zoo.peft as zp
    from zoo import run_dir as runs
    from zoo.model_card import model_card

    config = built.config
    zp.save_adapter(built.model, run_dir / runs.ADAPTER_DIR)
    results = {}
    if result.best_metrics:
        results["val"] = {"metrics": result.best_metrics, "step": result.best_step, "note": f"best step {result.best_step}"}
    if test_metrics is not None:
        weights = "best validation checkpoint" if (config.train.load_best_at_end and result.best_metrics) else "final weights"
        results["test"] = {"metrics": test_metrics, "step": result.best_step if "best" in weights else result.steps,
                           "note": weights}
    runs.write_json(run_dir / runs.EVAL_FILE, results)
    training = {"steps": result.steps, "epochs": result.epochs, "stopped_early": result.stopped_early,
                "seconds": result.train_seconds}
    card = model_card(
        recipe=recipe, command=command, config=config, backbone_spec=built.resolved.backbone,
        dataset_spec=built.resolved.dataset, task_kind=built.resolved.task_kind, main_metric=built.task.main_metric,
        report=report, results=results, training=training, data_dir=built.data_dir, run_dir=run_dir,
        sources=built.sources, rows_used={role: len(dataset) for role, dataset in built.datasets.items()},
        changed=list(changed),
    )
    runs.atomic_write_text(run_dir / runs.CARD_FILE, card)
    runs.mark(
        run_dir, "complete", finished=runs.now(), steps=result.steps, main_metric=built.task.main_metric,
        best_metric=result.best_metric, best_step=result.best_step, trainable_parameters=report.trainable,
        total_parameters=report.total,
    )
    for split, entry in results.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in entry["metrics"].items() if isinstance(v, (int, float)))
        print(f"{split}: {shown}")
    print(f"done: {run_dir} (model card {run_dir / runs.CARD_FILE})")
