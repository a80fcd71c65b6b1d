"""``zoo tune RECIPE [key=value ...] --trials N [--search KEY=SPEC ...] [--study DIR] [--jobs N]``.

A shell over :func:`zoo.tune.tune`: Optuna's TPE over the searched keys, trials pruned by a
median pruner at each evaluation, every trial a normal run; the same command again resumes.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    from zoo.tune.space import GRAMMAR

    parser = commands.add_parser(
        "tune",
        help="search a recipe's hyperparameters (Optuna TPE, median pruning)",
        description="Search hyperparameters of a recipe; every trial is a normal run.\n"
        "The same command again resumes the study: failed trials are retried, and a larger\n"
        "--trials adds trials.",
        epilog=GRAMMAR,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="a recipe name (zoo ls recipes) or YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="fixed overrides, e.g. scale=tiny")
    parser.add_argument(
        "--trials", type=int, required=True, help="finished (completed or pruned) trials the study should have"
    )
    parser.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="a searched key (repeatable); default: the recipe's search: section",
    )
    parser.add_argument(
        "--study",
        type=Path,
        default=None,
        help="study folder (default tune/<recipe> for the recipe's search: section as written, "
        "tune/<recipe>-<digest> for other searches or overrides)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once in this process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (each trial's is derived from it)")
    parser.set_defaults(run=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from zoo.errors import ConfigError
    from zoo.experiment.config import parse_overrides
    from zoo.experiment.recipes import find_recipe, read_recipe
    from zoo.experiment.runner import RunInterrupted
    from zoo.tune import TrialsFailing, parse_search, tune
    from zoo.tune.study import default_study_dir

    recipe_specs = read_recipe(find_recipe(args.recipe)).get("search") or {}
    parameters = parse_search(args.search or recipe_specs)
    try:  # the recipe's own search, to tell whether this search is it (the default folder depends on that)
        recipe_parameters = parse_search(recipe_specs)
    except ConfigError:  # a recipe whose search: section --search replaces
        recipe_parameters = []
    overrides = parse_overrides(list(args.overrides))
    study = args.study or default_study_dir(args.recipe, overrides, parameters, recipe_parameters)
    try:
        result = tune(args.recipe, overrides, parameters, args.trials, study, jobs=args.jobs, seed=args.seed)
    except TrialsFailing as error:
        print(f"zoo tune: error: {error}", file=sys.stderr)
        return 1
    except RunInterrupted as interrupted:
        how = "interrupted" if interrupted.signal == signal.SIGINT else f"stopped by {interrupted.signal.name}"
        print(f"\n{how} in {interrupted.run_dir}; the same command resumes the study and that trial", file=sys.stderr)
        return 128 + interrupted.signal  # as a shell reports a process ended by that signal
    print(f"{result.finished} finished, {result.pruned} pruned, {result.failed} failed trials in {result.study_dir}")
    for plot in result.plots:
        print(f"  plot {plot}")
    if result.best_recipe is None:
        print(f"no trial completed, so there is no {study / 'best.yaml'} yet")
    return 0 if result.finished else 1
