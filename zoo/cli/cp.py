"""``zoo cp RECIPE DEST``: copy a recipe to edit it.

The copy is self-contained: the recipe's ``defaults`` are merged in, so every key it uses
is in front of you. ``zoo train DEST`` (or ``zoo validate DEST``) then runs the copy.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("cp", help="copy a recipe (with its defaults merged in) to edit it")
    parser.add_argument("recipe", help="a recipe name (zoo ls recipes) or YAML file")
    parser.add_argument("dest", type=Path, help="file to write (a folder gets <recipe name>.yaml)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoo.errors import ConfigError
    from zoo.experiment.recipes import find_recipe, read_recipe
    from zoo.experiment.yaml_files import dump_yaml
    from zoo.files import atomic_write_text

    source = find_recipe(args.recipe)
    dest = args.dest / source.name if args.dest.is_dir() else args.dest
    if dest.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{dest}: a recipe file must end in .yaml")
    if dest.exists() and not args.force:
        raise ConfigError(f"{dest} exists; pass --force to overwrite it")
    data = read_recipe(source)
    order = ["description", "scale", "backbone", "data", "task", "method", "train", "tiny"]
    ordered = {key: data[key] for key in order if key in data}
    ordered.update({key: value for key, value in data.items() if key not in ordered})
    header = "".join(line + "\n" for line in source.read_text().splitlines() if line.startswith("#"))
    header = header.split("\n\n")[0] if header else ""
    text = (
        f"{header}# Copied from {source} with its defaults merged in; edit it and run: zoo train {dest}\n"
        f"# The tiny: section is what scale=tiny changes (a smoke run on synthetic data).\n\n" + dump_yaml(ordered)
    )
    atomic_write_text(dest, text)
    print(f"copied {args.recipe} to {dest}")
    return 0
