"""``zoo predict NAME_OR_RUN_DIR INPUT... [--format table|json|csv]``: predictions for the domain's inputs.

NAME is a hub adapter (pulled first if needed) or a pulled adapter folder; RUN_DIR a finished
run. Inputs: texts or ``.txt`` files (one text a line; ``-`` for standard input), image files or
folders, FASTA files or sequences, audio files. ``json`` prints a list with one object per input:
``input``, the predicted ``label`` (by class name where the task has names) and the class ``scores``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("predict", help="predict with a hub adapter or a run directory")
    parser.add_argument("model", help="<domain>/<task>-<method>[@version], a pulled adapter folder, or a run directory")
    parser.add_argument("inputs", nargs="+", help="texts or .txt files, image files, FASTA files, audio files")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--hub", help="the hub to pull NAME from (default: $ZOO_HUB, then zoo's own)")
    parser.add_argument("--backbone-weights", help="a local checkpoint of the base backbone (used before any other)")
    parser.add_argument(
        "--force", action="store_true", help="load an adapter even if the base weights' fingerprint differs"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.set_defaults(run=run)


def _rows(names, predictions):
    for name, prediction in zip(names, predictions):
        yield {"input": name, **prediction}


def run(args: argparse.Namespace) -> int:
    from zoo.hub.inputs import read_inputs
    from zoo.hub.predict import load

    predictor = load(args.model, hub=args.hub, backbone_weights=args.backbone_weights, force=args.force)
    inputs, names = read_inputs(predictor.domain, args.inputs)
    rows = list(_rows(names, predictor.predict(inputs, args.batch_size)))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    classes = list(rows[0].get("scores", {})) if rows else []
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        value_columns = ["label"] if "label" in rows[0] else [key for key in rows[0] if key != "input"]
        writer.writerow(["input", *value_columns, *classes])
        for row in rows:
            writer.writerow(
                [row["input"], *(row.get(k) for k in value_columns), *(f"{row['scores'][c]:.6f}" for c in classes)]
            )
        return 0
    width = min(60, max(len(str(row["input"])) for row in rows))
    for row in rows:
        shown = str(row["input"]) if len(str(row["input"])) <= width else str(row["input"])[: width - 3] + "..."
        if "label" in row:
            print(f"{shown:<{width}}  {row['label']!s:<12} {row['scores'][row['label']]:.3f}")
        else:
            print(f"{shown:<{width}}  {row.get('value', row.get('labels'))}")
    return 0
