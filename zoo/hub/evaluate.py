"""``zoo eval NAME --data-root DIR [--split test]``: a hub adapter measured on a dataset here.

The dataset is the one the adapter was trained on (or ``--dataset``, another registered one
with the same classes), read from ``--data-root`` (else ``$ZOO_DATA_DIR``); the whole split is
used (no ``data.max_eval_examples`` subset), so the numbers can differ from the hub's. Every input
goes through the adapter's input transform (``residue_window``, say: residues 1-56 of each sequence),
whichever dataset it is read from, as its training data did.
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from zoo.catalog.input_transforms import split_transform_options
    from zoo.errors import ConfigError
    from zoo.experiment.build import load_split, resolve
    from zoo.hub.predict import load
    from zoo.train.task import dataset_size

    predictor = load(str(args.run_dir), hub=args.hub, backbone_weights=args.backbone_weights)
    if predictor.config is None or predictor.task is None:
        raise ConfigError(f"{args.run_dir}: cannot be evaluated (no configuration)")
    config = predictor.config
    # the options that chose the adapter's input transform are not the loader's: the transform is applied itself
    _, config.data.options = split_transform_options(resolve(config).dataset.input_transform, config.data.options)
    if args.dataset:
        config.data.name = args.dataset
    config.data.root = args.data_root or None
    config.data.download = False
    resolved = dataclasses.replace(resolve(config), input_transform=predictor.input_transform)
    if args.split not in resolved.dataset.splits:
        raise ConfigError(
            f"--split {args.split!r}: dataset {resolved.dataset.name} has the splits {', '.join(resolved.dataset.splits)}"
        )
    dataset, _ = load_split(config, resolved, args.split)
    metrics = predictor.task.evaluate(predictor.model, dataset, args.batch_size or config.train.eval_batch_size)
    print(f"{predictor.name} on {config.data.name} {args.split} ({dataset_size(dataset)} examples):")
    for name, value in metrics.items():
        print(f"  {name:<14} {value:.4f}")
    return 0
