"""``zoo eval NAME --data-root DIR [--split test]``: a hub adapter measured on a dataset here.

The dataset is the one the adapter was trained on (or ``--dataset``, another registered one
with the same classes), read from ``--data-root`` (else ``$ZOO_DATA_DIR``); the whole split is
used (no ``data.max_eval_examples`` subset), so the numbers can differ from the hub's. Every input
goes through the adapter's input transform (``residue_window``, say: residues 1-56 of each sequence),
whichever dataset it is read from, as its training data did.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from zoo.hub.locations import say_to_stderr

if TYPE_CHECKING:
    from zoo.experiment.predictions import Predictions


@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate` measured: the metrics, the rows, and each row's output where the task keeps them."""

    name: str
    dataset: str
    split: str
    examples: int
    metrics: dict[str, float]
    main_metric: str
    predictions: Predictions | None


def evaluate(
    name_or_dir: str | os.PathLike,
    split: str = "test",
    data_root: str | os.PathLike | None = None,
    dataset: str | None = None,
    hub: str | None = None,
    backbone_weights: str | os.PathLike | None = None,
    batch_size: int | None = None,
    log: Callable[[str], None] | None = say_to_stderr,
) -> Evaluation:
    """A hub adapter, pulled folder or run directory measured on ``split`` of its dataset (or ``dataset``)."""
    from zoo.catalog.input_transforms import split_transform_options
    from zoo.errors import ConfigError
    from zoo.experiment.build import load_split, resolve
    from zoo.experiment.predictions import recording_outputs
    from zoo.hub.predict import load
    from zoo.train.task import dataset_size

    predictor = load(str(name_or_dir), hub=hub, backbone_weights=backbone_weights, log=log)
    if predictor.config is None or predictor.task is None:
        raise ConfigError(f"{name_or_dir}: cannot be evaluated (no configuration)")
    config = predictor.config
    # the options that chose the adapter's input transform are not the loader's: the transform is applied itself
    _, config.data.options = split_transform_options(resolve(config).dataset.input_transform, config.data.options)
    if dataset:
        config.data.name = dataset
    config.data.root = str(data_root) if data_root else None
    config.data.download = False
    resolved = dataclasses.replace(resolve(config), input_transform=predictor.input_transform)
    if split not in resolved.dataset.splits:
        raise ConfigError(
            f"--split {split!r}: dataset {resolved.dataset.name} has the splits {', '.join(resolved.dataset.splits)}"
        )
    rows, _ = load_split(config, resolved, split)
    with recording_outputs(predictor.task) as capture:
        metrics = predictor.task.evaluate(predictor.model, rows, batch_size or config.train.eval_batch_size)
    main = getattr(predictor.task, "main_metric", "") or next(iter(metrics))
    return Evaluation(predictor.name, config.data.name, split, dataset_size(rows), metrics, main, capture.predictions())


def run(args: argparse.Namespace) -> int:
    result = evaluate(
        args.run_dir, args.split, args.data_root, args.dataset, args.hub, args.backbone_weights, args.batch_size
    )
    print(f"{result.name} on {result.dataset} {result.split} ({result.examples} examples):")
    for name, value in result.metrics.items():
        print(f"  {name:<14} {value:.4f}")
    return 0
