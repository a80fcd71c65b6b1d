"""``zoo train RECIPE [key=value ...] [--out DIR] [--resume] [--nproc N]``: train a recipe.

A shell over :func:`zoo.experiment.run` (which says what is written when); this file adds
only what a command line needs: ``--nproc`` through torchrun, and Ctrl-C (exit code 130) or
SIGTERM (143) with the command that resumes.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a recipe (zoo ls recipes)",
        description="Train a recipe. Overrides reach any key: method.r=16 train.lr=3e-4 data.root=/data scale=tiny",
    )
    parser.add_argument("recipe", help="a recipe name (vision/medical-lora) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.lr=3e-4 method.r=16 scale=tiny")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run directory (default runs/<recipe>, runs/tiny/<recipe> at scale=tiny; -2, -3... if taken)",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--nproc", type=int, default=1, help="processes (DDP through torchrun; GPUs or CPU with gloo)")
    parser.set_defaults(run=run, accepts_overrides=True)


def _launch(args: argparse.Namespace, run_dir: Path) -> int:
    from zoo.train.distributed import launch  # not zoo.train.launch: once imported, that name is the module

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
    from zoo.errors import ConfigError
    from zoo.experiment import run_dir as runs
    from zoo.experiment.config import load_config
    from zoo.experiment.runner import RunInterrupted, recipe_label
    from zoo.experiment.runner import run as run_experiment
    from zoo.train.distributed import launched_by_torchrun

    if args.nproc < 1:
        raise ConfigError(f"--nproc={args.nproc} must be a whole number >= 1")
    if args.nproc > 1 and not launched_by_torchrun():
        config = load_config(args.recipe, args.overrides)
        run_dir = runs.choose_run_dir(args.out, recipe_label(args.recipe), config, args.resume)
        if args.resume:
            runs.check_resume_config(run_dir, config)
        return _launch(args, run_dir)
    try:
        run_experiment(args.recipe, args.overrides, out=args.out, resume=args.resume, command=args.command_line)
    except RunInterrupted as interrupted:
        if interrupted.run_dir is not None:
            how = "interrupted" if interrupted.signal == signal.SIGINT else f"stopped by {interrupted.signal.name}"
            print(f"\n{how}; continue with: {runs.resume_command(args.command_line, interrupted.run_dir)}")
        return 128 + interrupted.signal  # as a shell reports a process ended by that signal
    return 0
