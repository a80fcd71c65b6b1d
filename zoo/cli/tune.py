"""``zoo tune RECIPE [key=value ...] --trials N [--search KEY=SPEC ...] [--study DIR] [--jobs N]``.

A shell over :func:`zoo.tune.tune`: Optuna's TPE over the searched keys, trials pruned by a
median pruner at each evaluation, every trial a normal run; the same command again resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    from zoo.tune.space import GRAMMAR

    parser = commands.add_parser(
        "tune",
        help="search a recipe's hyperparameters (Optuna TPE, median pruning)",
        description="Search hyperparameters of a recipe; every trial is a normal run.",
        epilog=GRAMMAR,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="a recipe name (zoo ls recipes) or YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="fixed overrides, e.g. scale=tiny")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should have")
    parser.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="a searched key (repeatable); default: the recipe's search: section",
    )
    parser.add_argument("--study", type=Path, default=None, help="study folder (default tune/<recipe>)")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once in this process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    parser.set_defaults(run=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from zoo.experiment.config import parse_overrides
    from zoo.experiment.recipes import find_recipe, read_recipe
    from zoo.experiment.runner import recipe_label
    from zoo.tune import parse_search, tune

    specs = args.search or read_recipe(find_recipe(args.recipe)).get("search") or {}
    parameters = parse_search(specs)
    study = args.study or Path("tune") / recipe_label(args.recipe)
    result = tune(
        args.recipe,
        parse_overrides(list(args.overrides)),
        parameters,
        args.trials,
        study,
        jobs=args.jobs,
        seed=args.seed,
    )
    print(f"{result.finished} finished, {result.pruned} pruned, {result.failed} failed trials in {result.study_dir}")
    for plot in result.plots:
        print(f"  plot {plot}")
    return 0 if result.finished else 1
