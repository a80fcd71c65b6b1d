"""``zoo validate RECIPE [key=value ...]``: check a configuration without loading weights or data.

Checks the keys and value types of every section, that the backbone, dataset, task kind and
method exist, the method's options, and that the method fits the backbone's structure (by
applying it to the backbone's tiny random-weight variant, which loads nothing). Reports where
the data would come from.
"""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("validate", help="check a recipe and overrides without loading weights")
    parser.add_argument("recipe", help="a recipe name (zoo ls recipes) or YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.set_defaults(run=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from zoo.catalog.backbones import package_weights
    from zoo.experiment.build import check_method_applies, data_status, resolve
    from zoo.experiment.config import load_config

    config = load_config(args.recipe, args.overrides)
    resolved = resolve(config)
    report = check_method_applies(config)
    weights = resolved.backbone.weights
    if config.tiny:
        pretrained = "tiny random weights (scale=tiny)"
    elif isinstance(config.backbone.pretrained, str):
        pretrained = f"local checkpoint {config.backbone.pretrained}"
    elif config.backbone.pretrained and weights is not None and (packaged := package_weights(resolved.backbone)):
        pretrained = f"{weights.source} from the installed package {packaged[1]}"
    elif config.backbone.pretrained and weights is not None:
        pretrained = f"{weights.source} (hub or local cache; offline: backbone.pretrained=/path)"
    else:
        pretrained = "random weights (backbone.pretrained=false)"
    print(f"{args.recipe}: valid")
    print(f"  backbone  {config.backbone.name}: {pretrained}")
    print(f"  data      {config.data.name} ({resolved.task_kind}): {data_status(config, resolved)}")
    options = ", ".join(f"{k}={v}" for k, v in config.method.options.items()) or "defaults"
    print(f"  method    {config.method.name} ({options}); on the tiny variant: {report}")
    settings = config.train
    budget = f"max_steps {settings.max_steps}" if settings.max_steps else f"{settings.epochs} epochs"
    print(
        f"  train     lr {settings.lr}, batch {settings.batch_size} x {settings.grad_accum}, {budget}, "
        f"{settings.precision}, seed {settings.seed}"
    )
    return 0
