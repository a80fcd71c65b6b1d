"""``zoo predict NAME_OR_RUN_DIR INPUT... [--format table|json|csv]``: predictions for the domain's inputs.

NAME is a hub adapter (pulled first if needed) or a pulled adapter folder; RUN_DIR a finished
run. What an adapter reads is its domain's registered input reader (``zoo.hub.inputs``; ``zoo
predict --help`` lists them): texts or files of texts, images, sequences, audio, clips. An
argument with a file suffix or a path is read as a file, which must exist and suit the adapter;
``-`` reads standard input, one input a line. ``json`` prints a list with one object per input:
``input``, the predicted ``label`` (by class name where the task has names; for retrieval, the
best-matching input of the other kind) and the ``scores``, or the regression ``value``, all at
full precision; the table rounds them.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from zoo.errors import DataError

SIGNIFICANT_DIGITS = 4
"""Of a regression value in the table (json and csv keep every digit)."""
INPUT_WIDTH = 60


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict", help="predict with a hub adapter or a run directory", formatter_class=_InputsHelpFormatter
    )
    parser.add_argument("model", help="<domain>/<task>-<method>[@version], a pulled adapter folder, or a run directory")
    parser.add_argument("inputs", nargs="*", help=INPUTS_HELP)  # completed by the domains' readers when shown
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--hub", help="the hub to pull NAME from (default: $ZOO_HUB, then zoo's own)")
    parser.add_argument("--backbone-weights", help="a local checkpoint of the base backbone (used before any other)")
    parser.add_argument(
        "--force", action="store_true", help="load an adapter even if the base weights' fingerprint differs"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: the outputs from the file zoo export wrote, through onnxruntime (default torch)",
    )
    parser.add_argument("--onnx", type=Path, help="with --runtime onnx: the exported file (default: ./<name>.onnx)")
    parser.set_defaults(run=run)


INPUTS_HELP = "what to predict on, as the adapter's domain reads it; '-' reads standard input (one input a line)"


def inputs_help() -> str:
    """INPUTS_HELP and what each registered domain's adapters take (the domains load only when help is shown)."""
    from zoo.hub.inputs import describe_readers

    return f"{INPUTS_HELP}. By domain: {'; '.join(describe_readers())}".replace("%", "%%")


class _InputsHelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        return inputs_help() if action.dest == "inputs" else action.help


def _rows(names: list[str], predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"input": name, **prediction} for name, prediction in zip(names, predictions)]


def _write_csv(rows: list[dict[str, Any]]) -> None:
    # every row's score columns, in order of appearance (retrieval scores a query by clips, a clip by queries)
    classes = list(dict.fromkeys(name for row in rows for name in row.get("scores", {})))
    value_columns = ["label"] if "label" in rows[0] else [key for key in rows[0] if key != "input"]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["input", *value_columns, *classes])
    for row in rows:
        values = [" ".join(map(str, v)) if isinstance(v, list) else v for v in (row.get(k) for k in value_columns)]
        scores = row.get("scores", {})
        writer.writerow([row["input"], *values, *(f"{scores[c]:.6f}" if c in scores else "" for c in classes)])


def _shown(row: dict[str, Any]) -> str:
    if "label" in row:
        return f"{row['label']!s:<12} {row['scores'][row['label']]:.3f}"
    if "value" in row:
        return f"{row['value']:.{SIGNIFICANT_DIGITS}g}"
    return " ".join(map(str, row.get("labels", [])))


def _write_table(rows: list[dict[str, Any]]) -> None:
    width = min(INPUT_WIDTH, max(len(str(row["input"])) for row in rows))
    for row in rows:
        name = str(row["input"])
        shown = name if len(name) <= width else name[: width - 3] + "..."
        print(f"{shown:<{width}}  {_shown(row)}")


def run(args: argparse.Namespace) -> int:
    from zoo.hub.inputs import read_inputs
    from zoo.hub.predict import load

    if not args.inputs:  # before pulling or building anything
        raise DataError(
            f"no inputs given: pass what to predict on after {args.model} (inputs, files, a folder, or '-' to read "
            f"standard input; zoo predict --help lists what each domain reads)"
        )
    if args.onnx is not None and args.runtime != "onnx":
        raise DataError("--onnx names the file for --runtime onnx; pass --runtime onnx too")
    if args.runtime == "onnx":
        from zoo.hub.onnx_export import require_onnx

        require_onnx()
    predictor = load(args.model, hub=args.hub, backbone_weights=args.backbone_weights, force=args.force)
    if args.runtime == "onnx":
        from zoo.cli.export import default_out
        from zoo.hub.onnx_export import OnnxPredictor

        predictor = OnnxPredictor(predictor, args.onnx or default_out(args.model))
    data_options = predictor.config.data.options if predictor.config is not None else None
    inputs, names = read_inputs(
        predictor.domain, args.inputs, predictor.name, task_kind=predictor.task_kind, data_options=data_options
    )
    rows = _rows(names, predictor.predict(inputs, args.batch_size, names))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        _write_csv(rows)
    else:
        _write_table(rows)
    return 0
