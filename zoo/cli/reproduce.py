"""``zoo reproduce TABLE [--scale tiny|cpu|paper] [--out DIR] [--jobs N] [--executor local|slurm] [--shard I/N]
[--dry-run]``: run a result table's cells (see :mod:`zoo.results.reproduce`) and render it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reproduce",
        help="run a result table (zoo/recipes/tables/) and render it",
        description="Run every cell of a result table that is not done yet (a rerun skips finished cells and "
        "resumes interrupted ones), store a row per cell and render the table.",
    )
    parser.add_argument("table", help="a table under zoo/recipes/tables (cross-domain, data-scale) or a YAML file")
    parser.add_argument(
        "--scale",
        choices=("tiny", "cpu", "paper"),
        default="tiny",
        help="tiny: tiny random backbones on fixtures (seconds); cpu: real MiniLM for text on the shared "
        "data, small random backbones elsewhere; paper: the recipes as written",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="output folder (run directories and the store)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once on this machine (local executor)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit parameter, e.g. slurm_partition=gpu timeout_min=120 (cluster=debug runs locally)",
    )
    parser.add_argument("--no-wait", action="store_true", help="slurm: submit and return without waiting")
    parser.add_argument("--shard", default=None, metavar="I/N", help="run shard I of N (every N-th cell)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what is already done; run nothing")
    parser.set_defaults(run=run)


def _slurm_options(pairs: list[str]) -> dict:
    from zoo.errors import ConfigError
    from zoo.experiment.yaml_files import parse_value

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--slurm {pair!r} must look like KEY=VALUE, e.g. slurm_partition=gpu")
        options[key] = parse_value(value)
    return options


def run(args: argparse.Namespace) -> int:
    from zoo.experiment.runner import RunInterrupted
    from zoo.results.reproduce import reproduce

    if args.dry_run:
        summary = reproduce(args.table, args.scale, args.out, shard=args.shard, dry_run=True)
        for cell in summary.cells:
            print(f"{summary.states[cell.id]:<7} {cell.id:<40} {cell.recipe} {' '.join(cell.overrides)}")
        counts = {s: list(summary.states.values()).count(s) for s in dict.fromkeys(summary.states.values())}
        print(
            f"{len(summary.cells)} cells of {summary.table} at scale {args.scale}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items())
        )
        return 0
    try:
        summary = reproduce(
            args.table,
            args.scale,
            args.out,
            jobs=args.jobs,
            executor=args.executor,
            shard=args.shard,
            slurm=_slurm_options(args.slurm),
            wait=not args.no_wait,
        )
    except RunInterrupted:
        print(f"\ninterrupted; the running cell is marked interrupted. Continue with: {args.command_line}")
        return 130
    counts = {
        o: summary.count(o)
        for o in ("complete", "skipped", "n/a", "failed", "submitted", "interrupted")
        if summary.count(o)
    }
    print(
        f"{summary.table} ({args.scale}): {len(summary.cells)} cells in {summary.seconds:.1f}s: "
        + ", ".join(f"{n} {o}" for o, n in counts.items())
    )
    if "submitted" not in counts or not args.no_wait:
        from zoo.cli.results import render_table

        for path in render_table(args.table, args.scale, args.out):
            print(f"wrote {path}")
    return 1 if counts.get("failed") else 0
