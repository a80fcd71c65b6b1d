"""``zoo merge A B ... --weights 0.5,0.5 [--method linear|ties|dare_linear|dare_ties|svd] [--density D]
[--rank R] [--seed S] --out DIR``: adapters of one method on one backbone combined on their weight updates
(:mod:`zoo.peft.arithmetic`).

Each input is a run directory (or its ``adapter/``), a pulled adapter folder, or a hub name, pulled as
``zoo predict`` pulls it. The base model is built once, as ``zoo predict`` builds the first input's. DIR
is a new run directory (``config.yaml``: the first input's with the merged method; ``run.json``, whose
``merge`` section says what was merged; ``adapter/``) that ``zoo predict DIR`` and ``zoo eval DIR`` read.
When the inputs' heads differ (adapters of different tasks), each task keeps its own head and DIR holds
one such run directory per task, ``DIR/<dataset>/``, all with the same merged update.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.peft.arithmetic import MergedAdapter

METHODS_HELP = (
    "linear (default): the weighted sum of the updates; ties: each update trimmed to its top --density "
    "entries by magnitude, a sign elected per entry, the agreeing entries averaged; dare_linear / dare_ties: "
    "entries dropped with probability 1 - density and the rest scaled by 1/density, then summed / as ties; "
    "svd: linear, cut to --rank (default: the largest input rank)"
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("merge", help="combine adapters of one method and backbone into one (task arithmetic)")
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER", help="run directories, pulled adapters or hub names")
    parser.add_argument(
        "--weights",
        required=True,
        help="one weight per adapter, in order, comma-separated: 0.5,0.5 (with a leading minus: --weights=-1,1)",
    )
    parser.add_argument("--method", default="linear", help=METHODS_HELP)
    parser.add_argument("--density", type=float, help="ties and dare: the fraction of each update's entries kept")
    parser.add_argument(
        "--rank", type=int, help="rank of the merged lora/dora (default: the sum of the input ranks, which is exact)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of dare's drop masks (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="the folder to create")
    parser.add_argument("--hub", help="the hub to pull names from (default: $ZOO_HUB, then zoo's own)")
    parser.add_argument("--backbone-weights", help="a local checkpoint of the base backbone (as for zoo predict)")
    parser.set_defaults(run=run)


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--weights {text!r}: give numbers separated by commas, one per adapter, e.g. 0.5,0.5"
        ) from None


def run(args: argparse.Namespace) -> int:
    from zoo.hub.merging import merge_runs

    out = Path(args.out)
    merged, details, tasks = merge_runs(
        args.adapters,
        _weights(args.weights),
        out,
        args.method,
        args.density,
        args.rank,
        args.seed,
        args.hub,
        args.backbone_weights,
        args.command_line,
    )
    _report(out, merged, details, tasks)
    return 0


def _report(out: Path, merged: MergedAdapter, details: dict, tasks: list[str]) -> None:
    rank = f", rank {merged.rank}" if merged.rank is not None else ""
    print(
        f"merged {len(details['inputs'])} {merged.method} adapters ({details['method']}{rank}, {details['layers']} layers)"
    )
    if merged.rank is not None:
        error = details["relative_error"]
        print(
            f"  the written low-rank update differs from the combined one by {error['max']:.2g} at most "
            f"({error['mean']:.2g} on average; relative Frobenius error per layer)"
        )
    for folder in [out / task for task in tasks] or [out]:
        head = f" (head of {folder.name})" if tasks else ""
        print(f"  {folder}{head}: zoo predict {folder} INPUT...")
