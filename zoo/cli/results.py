"""``zoo results add RUN_DIR | rebuild [DIR] | table TABLE | show``: the results store (SQLite in the output folder);
``zoo results merge-table ADAPTER ADAPTER ... --out DIR``: the merge table (:mod:`zoo.hub.merge_table`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "results",
        help="the results store: add runs, rebuild it, render tables",
        description="The results store, results.sqlite in the output folder (default results/).",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add run directories (zoo train ones too) to the store")
    add.add_argument("run_dirs", nargs="+", type=Path)
    add.add_argument("--out", type=Path, default=Path("results"), help="folder holding results.sqlite")
    rebuild = actions.add_parser("rebuild", help="remake the store from the run directories under a folder")
    rebuild.add_argument("folder", nargs="?", type=Path, default=Path("results"))
    table = actions.add_parser("table", help="render a table as Markdown, CSV and PNG plots")
    table.add_argument("table")
    table.add_argument("--scale", choices=("tiny", "cpu", "paper"), default="tiny")
    table.add_argument("--out", type=Path, default=Path("results"), help="folder holding results.sqlite")
    table.add_argument("--to", type=Path, default=None, help="where to write (default OUT/TABLE/SCALE)")
    table.add_argument("--no-plots", action="store_true")
    merges = actions.add_parser(
        "merge-table",
        help="each task's test metric for its own adapter and for linear, TIES, DARE and SVD merges of them all",
    )
    merges.add_argument(
        "adapters", nargs="+", help="one adapter per task: hub names, pulled folders or run directories"
    )
    merges.add_argument("--out", type=Path, required=True, help="folder for the merges and evaluations (resumable)")
    merges.add_argument("--to", type=Path, default=None, help="where to write merge.md and merge.csv (default OUT)")
    merges.add_argument("--hub", help="the hub to pull names from (default: $ZOO_HUB, then zoo's own)")
    merges.add_argument("--data-root", help="the folder holding the datasets (default: $ZOO_DATA_DIR)")
    merges.add_argument("--backbone-weights", help="a local checkpoint of the base backbone (as for zoo predict)")
    show = actions.add_parser("show", help="list the store's rows")
    show.add_argument("--out", type=Path, default=Path("results"))
    show.add_argument("--table", default=None)
    parser.set_defaults(run=run)


def render_table(
    table: str, scale: str, out: Path, to: Path | None = None, plots: bool = True, command: str = ""
) -> list[Path]:
    from zoo.results.render import render
    from zoo.results.spec import load_table
    from zoo.results.store import ResultsStore

    spec = load_table(table)
    with ResultsStore(out, create=False) as store:
        rows = store.rows(spec.name, scale)
    command = command or f"zoo reproduce {spec.name} --scale {scale} --out {out}"
    return render(rows, to or (Path(out) / spec.name / scale), spec, scale, command, plots)


def run(args: argparse.Namespace) -> int:
    from zoo.results.store import ResultsStore, add_runs, rebuild

    if args.action == "add":
        rows = add_runs(args.out, args.run_dirs)
        for row in rows:
            print(f"added {row['run_dir']}: {row['status']}, {row.get('metric')} {row.get('metric_value')}")
        return 0
    if args.action == "rebuild":
        rebuilt = rebuild(args.folder)
        under = f"{rebuilt.count - len(rebuilt.kept)} run(s) under {args.folder}"
        if rebuilt.kept:
            under += f" and {len(rebuilt.kept)} from outside it (added with `zoo results add`)"
        print(f"rebuilt {rebuilt.path} from {under}")
        if rebuilt.previous_unreadable:
            print(
                f"zoo results rebuild: the previous store could not be read, so the runs it had from outside "
                f"{args.folder} are not known; add them again with `zoo results add RUN_DIR --out {args.folder}` "
                f"({rebuilt.previous_unreadable})",
                file=sys.stderr,
            )
        for run, why in rebuilt.dropped:
            print(f"zoo results rebuild: dropped {run}: {why}", file=sys.stderr)
        return 0
    if args.action == "merge-table":
        return _merge_table(args)
    if args.action == "table":
        for path in render_table(args.table, args.scale, args.out, args.to, not args.no_plots):
            print(f"wrote {path}")
        return 0
    with ResultsStore(args.out, create=False) as store:
        for row in store.rows(args.table):
            print(
                f"{row.get('table') or '-':<14} {row.get('scale') or '-':<6} {row.get('cell') or row['run_dir']:<40} "
                f"{row['status']:<10} {row.get('metric') or ''} {row.get('metric_value')}"
            )
    return 0


def _merge_table(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from zoo.experiment.machine import machine_text
    from zoo.hub.merge_table import measure, render

    measured = measure(
        args.adapters, args.out, hub=args.hub, data_root=args.data_root, backbone_weights=args.backbone_weights
    )
    command = getattr(args, "command_line", "") or "zoo results merge-table " + " ".join(
        map(shlex.quote, args.adapters)
    )
    notes = [f"Made with `{command}` on {machine_text(threads=torch.get_num_threads())}, torch {torch.__version__}."]
    for path in render(measured, args.to or args.out, "# Merging " + ", ".join(args.adapters), notes):
        print(f"wrote {path}")
    return 0
