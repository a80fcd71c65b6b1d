"""``zoo export RUN_OR_NAME --format onnx [--out F] [--exporter dynamo|torchscript] [--force]``: the task model
(adapter folded into the weights where its method allows, head included) as one ONNX file.

The model is built as ``zoo predict`` builds it (a run directory, a pulled adapter folder or a hub name, the
base weights fingerprinted). The graph maps the backbone's tensors (text: ``input_ids`` and
``attention_mask``, dynamic batch and sequence; vision: ``pixel_values``, dynamic batch) to ``logits``.
Before anything is put in place, onnxruntime runs the graph on batches of other shapes than the export
example's and the outputs must equal the torch model's within 1e-4; F and ``F.json`` (inputs, outputs,
labels, preprocessing, the source adapter and its fingerprint, the parity numbers) appear together or
not at all. ``zoo predict RUN_OR_NAME --runtime onnx --onnx F`` predicts through the file.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from zoo.errors import ConfigError


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="export a run or hub adapter's task model to ONNX, parity-checked")
    parser.add_argument("model", help="<domain>/<task>-<method>[@version], a pulled adapter folder, or a run directory")
    parser.add_argument("--format", choices=("onnx",), required=True)
    parser.add_argument("--out", type=Path, help="the .onnx file to write (default: ./<name>.onnx); F.json beside it")
    parser.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="torch.onnx.export's exporter (default dynamo; torchscript is the legacy tracer)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--hub", help="the hub to pull NAME from (default: $ZOO_HUB, then zoo's own)")
    parser.add_argument("--backbone-weights", help="a local checkpoint of the base backbone (as for zoo predict)")
    parser.add_argument(
        "--force-fingerprint",
        action="store_true",
        help="load an adapter even if the base weights' fingerprint differs (zoo predict's --force)",
    )
    parser.set_defaults(run=run)


def default_out(model: str) -> Path:
    """``./<last part of the name>.onnx``: ``text/sst2-lora@1.0`` -> ``sst2-lora@1.0.onnx``."""
    return Path(f"{Path(str(model).rstrip('/')).name}.onnx")


def out_path(model: str, out: Path | None, force: bool) -> Path:
    path = out if out is not None else default_out(model)
    if path.suffix != ".onnx":
        raise ConfigError(f"--out {path}: name the file with the .onnx suffix (its description goes to .json beside)")
    if not force:
        for existing in (path, path.with_suffix(".json")):
            if existing.exists():
                raise ConfigError(f"{existing} exists; pass --force to overwrite it")
    return path


def run(args: argparse.Namespace) -> int:
    from zoo.files import atomic_write_text, make_temporary_file, move_into_place
    from zoo.hub.onnx_export import check_parity, metadata, metadata_path, plan_export, require_onnx, write_graph
    from zoo.hub.predict import load

    require_onnx()
    path = out_path(args.model, args.out, args.force)  # before anything is built
    predictor = load(args.model, hub=args.hub, backbone_weights=args.backbone_weights, force=args.force_fingerprint)
    plan = plan_export(predictor)
    how = (
        "adapter merged into the weights"
        if plan.merged
        else f"{plan.method}'s modules in the graph"
        if plan.method
        else "no adapter"
    )
    print(f"exporting {predictor.name} ({how}) with torch.onnx's {args.exporter} exporter")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = make_temporary_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write_graph(plan, Path(temporary), args.exporter)
        parity = check_parity(plan, Path(temporary))
        for check in parity["checks"]:
            print(f"parity {'x'.join(map(str, check['shape']))}: max abs difference {check['max_abs_diff']:.3g}")
        if not parity["passed"]:
            raise ConfigError(
                f"onnxruntime's outputs differ from the torch model's by {parity['max_abs_diff']:.3g} > atol "
                f"{parity['atol']:g}; nothing written (--exporter torchscript tries the other exporter)"
            )
        atomic_write_text(
            metadata_path(path), json.dumps(metadata(predictor, plan, args.exporter, parity), indent=2) + "\n"
        )
        move_into_place(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    print(f"wrote {path} and {metadata_path(path)} (parity max abs difference {parity['max_abs_diff']:.3g})")
    print(f"predict with: zoo predict {args.model} INPUT... --runtime onnx --onnx {path}")
    return 0
