"""``zoo eval RUN_DIR [--split test]``: evaluate a finished run's adapter again.

The backbone is rebuilt as the run's ``config.yaml`` says (so at default scale the same
pretrained weights or local checkpoint must be available), the adapter is loaded from
``adapter/``, and the split's metrics are printed and stored in ``eval_results.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="evaluate a finished run on a split")
    parser.add_argument(
        "run_dir", type=Path, help="a run directory made by zoo train, or a hub adapter (name or pulled folder)"
    )
    parser.add_argument("--split", default="test", help="split of the run's dataset (default test)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's train.eval_batch_size")
    parser.add_argument("--data-root", help="hub adapters: the folder holding the dataset (default: $ZOO_DATA_DIR)")
    parser.add_argument("--dataset", help="hub adapters: another registered dataset with the same classes")
    parser.add_argument("--hub", help="hub adapters: the hub to pull from (default: $ZOO_HUB, then zoo's own)")
    parser.add_argument("--backbone-weights", help="hub adapters: a local checkpoint of the base backbone")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from zoo.errors import ConfigError
    from zoo.experiment import run_dir as runs
    from zoo.experiment.build import load_built_run, load_split, resolve
    from zoo.train.task import dataset_size

    if not runs.is_run_dir(args.run_dir):
        from zoo.hub.evaluate import run as evaluate_hub_adapter

        return evaluate_hub_adapter(args)
    config = runs.read_config(args.run_dir)
    resolved = resolve(config)
    if args.split not in resolved.dataset.splits:
        raise ConfigError(
            f"--split {args.split!r}: dataset {resolved.dataset.name} has the splits {', '.join(resolved.dataset.splits)}"
        )
    built = load_built_run(args.run_dir)
    dataset, _ = load_split(config, resolved, args.split)
    device = "cuda" if config.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    model = built.model.to(device)
    batch_size = args.batch_size or config.train.eval_batch_size
    with torch.no_grad():
        metrics = built.task.evaluate(model, dataset, batch_size)
    runs.update_eval_results(
        args.run_dir, args.split, metrics, note=f"zoo eval, {dataset_size(dataset)} examples", at=runs.now()
    )
    print(f"{args.run_dir} on {config.data.name} {args.split} ({dataset_size(dataset)} examples):")
    for name, value in metrics.items():
        print(f"  {name:<14} {value:.4f}")
    return 0
