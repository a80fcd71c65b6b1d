"""``zoo ls [recipes|methods|backbones|datasets|tasks|structures|adapters] [PATTERN]``: what this installation
provides, and the adapters of the hubs (``--format table|md|csv|json``; ``--page``: the model-zoo page)."""

from __future__ import annotations

import argparse

from zoo.errors import ConfigError

KINDS = ("recipes", "methods", "backbones", "datasets", "tasks", "structures", "adapters")
FORMATS = ("table", "md", "csv", "json")
"""Of ``zoo ls adapters``: table is the one-line listing; the others are the rows of zoo.hub.catalog_page."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ls", help="list recipes, PEFT methods, backbones, datasets, task kinds or structures")
    parser.add_argument("what", choices=KINDS, nargs="?", default="recipes")
    parser.add_argument(
        "pattern", nargs="?", default="*", help="shell-style filter on names, e.g. 'vision/*' or 'esm*'"
    )
    parser.add_argument("--hub", help="adapters: the hub to list (default: $ZOO_HUB, then zoo's own)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="adapters: table (default), or one row per adapter as a Markdown table, CSV or JSON",
    )
    parser.add_argument(
        "--page",
        action="store_true",
        help="adapters: the whole model-zoo Markdown page (docs/zoo.md): a header saying how it is made, then the table",
    )
    parser.set_defaults(run=run)


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _recipes(pattern: str) -> None:
    from zoo.experiment.recipes import list_recipes, recipe_summary, recipes_root

    names = list_recipes(pattern)
    if not names:
        print(f"no recipes matching {pattern!r} under {recipes_root()}")
        return
    width = max(len(n) for n in names)
    for name in names:
        summary = recipe_summary(name)
        what = f"{summary['method']} on {summary['backbone']}, {summary['dataset']}"
        print(f"{name:<{width}}  {what:<42} {_short(summary['description'], 70)}")


def _methods(pattern: str) -> None:
    import fnmatch

    from zoo.peft import get_method, list_methods

    for name in list_methods():
        if not fnmatch.fnmatch(name, pattern):
            continue
        spec = get_method(name)
        doc = (__import__(spec.inject.__module__, fromlist=["_"]).__doc__ or "").strip().split("\n\n")[0]
        flags = ", ".join(
            f for f, on in (("mergeable", spec.mergeable), (f"peft:{spec.peft_type}", spec.peft_type)) if on
        )
        print(f"{name:<12} {_short(doc)}" + (f"  [{flags}]" if flags else ""))


def _backbones(pattern: str) -> None:
    from zoo.catalog.backbones import BACKBONES

    for name in BACKBONES.names(pattern):
        spec = BACKBONES.get(name)
        source = spec.weights.source if spec.weights else "no pretrained weights"
        print(f"{name:<22} {spec.domain:<11} {_short(spec.description, 80)}  [{source}]")


def _datasets(pattern: str) -> None:
    import warnings

    from zoo.catalog.datasets import (
        DATASETS,
        data_root,
        dataset_dir,
        describe_local_copy,
    )
    from zoo.catalog.download import ChecksumWarning

    root = data_root()
    for name in DATASETS.names(pattern):
        spec = DATASETS.get(name)
        classes = f", {spec.num_classes} classes" if spec.num_classes else ""
        print(f"{name:<26} {spec.domain:<11} {spec.task + classes:<26} {_short(spec.description, 80)}")
        if spec.folder is None:
            continue
        # What a run would read from the data root, which may be a subset or a re-split of the canonical copy.
        with warnings.catch_warnings():  # the lines below say which files differ from the canonical ones
            warnings.simplefilter("ignore", ChecksumWarning)
            splits = describe_local_copy(spec, root)
        if not splits:
            print(f"{'':<26} no local copy in {dataset_dir(spec, root)}")
        else:
            print(f"{'':<26} local copy {dataset_dir(spec, root)}:")
        for line in splits:
            print(f"{'':<28} {line}")


def _tasks(pattern: str) -> None:
    from zoo.tasks.train_tasks import TASK_BUILDERS

    for name in TASK_BUILDERS.names(pattern):
        print(f"{name:<16} {TASK_BUILDERS.get(name).description}")


def _structures(pattern: str) -> None:
    import fnmatch

    from zoo.catalog.domains import load_domains
    from zoo.peft import list_structures

    load_domains()  # the domains register their own structures (hf-t5, open-clip-vit, ...) when imported
    for name in list_structures():
        if fnmatch.fnmatch(name, pattern):
            print(name)


def _adapters(pattern: str, hub: str | None, output: str, page: bool) -> None:
    """Every hub searched; without --hub, one that cannot be read is skipped with a warning naming it."""
    import fnmatch
    import sys

    from zoo.hub import catalog_page, list_adapters
    from zoo.hub.locations import parse_hub

    def skip(hub_found, error) -> None:
        print(f"warning: skipping hub {hub_found}: {error}", file=sys.stderr)

    listed = list_adapters(hub, on_broken_hub=None if hub else skip)
    rows = [(h, e) for h, e in listed if fnmatch.fnmatch(e["name"], pattern)]
    if page:
        named = parse_hub(hub) if hub else None
        sys.stdout.write(catalog_page.to_page(catalog_page.adapter_rows(rows), named, pattern))
        return
    if output != "table":
        write = {"md": catalog_page.to_markdown, "csv": catalog_page.to_csv, "json": catalog_page.to_json}[output]
        sys.stdout.write(write(catalog_page.adapter_rows(rows)))
        if not rows:  # the output stays well-formed (a header, an empty list); the note goes to stderr
            print(f"no adapters matching {pattern!r}", file=sys.stderr)
        return
    if not rows:
        print(f"no adapters matching {pattern!r}")
    for hub_found, entry in rows:  # entries as zoo.hub.schema.HubEntry declares them
        main = entry["task"]["main_metric"]
        measured = entry["metrics"].get("test") or next(iter(entry["metrics"].values()), None)
        metric = ""
        if measured and main in measured["metrics"]:
            metric = f"{main} {measured['metrics'][main]:.4f} ({entry['dataset']['name']} {measured['split']}, {measured['examples']} examples)"
        label = f"{entry['name']}@{entry['version']}"
        print(f"{label:<28} {entry['method']['name']} on {entry['backbone']['name']:<14} {metric}  [{hub_found}]")


def run(args: argparse.Namespace) -> int:
    if args.what == "adapters":
        if args.page and args.format not in (None, "md"):
            raise ConfigError(f"--page writes a Markdown page; drop --format {args.format} (or drop --page)")
        _adapters(args.pattern, args.hub, args.format or "table", args.page)
        return 0
    if args.format or args.page:
        raise ConfigError(
            f"--format and --page list adapters only: zoo ls adapters --format ..., not zoo ls {args.what}"
        )
    {
        "recipes": _recipes,
        "methods": _methods,
        "backbones": _backbones,
        "datasets": _datasets,
        "tasks": _tasks,
        "structures": _structures,
    }[args.what](args.pattern)
    return 0
