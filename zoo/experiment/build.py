"""From a :class:`~zoo.experiment.config.RunConfig` to datasets, a model with its PEFT method, and a TrainTask.

Everything is found through the registries (backbones, datasets, task builders, methods),
so the core never imports a domain. The order is chosen so that a run fails early and
clearly: names and options first (:func:`resolve`, no weights), then the data (a missing
dataset says how to get it), then the backbone (unavailable weights say how to pass a local
checkpoint; there is never a silent switch to random weights), then the method.

At ``scale=tiny`` the backbone is the registry's tiny random-weight configuration and the
data is the dataset's synthetic fixture, written once (atomically) to
``fixtures/<dataset>`` under the cache root (:mod:`zoo.cache`, which ``ZOO_CACHE_DIR`` moves).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

import zoo.peft as zp
from zoo.cache import cache_dir
from zoo.catalog.backbones import BACKBONES, BackboneSpec, PretrainedUnavailable, create_backbone
from zoo.catalog.datasets import (
    DATASETS,
    DataError,
    DatasetSpec,
    SplitSource,
    data_root,
    dataset_dir,
    describe_split,
    load_dataset,
    load_noting_checksums,
    local_copy_present,
)
from zoo.catalog.download import ChecksumWarning, DownloadError
from zoo.catalog.input_transforms import InputTransform, split_transform_options, with_input_transform
from zoo.catalog.registry import UnknownNameError
from zoo.errors import ConfigError, MissingDataError
from zoo.experiment.config import RunConfig
from zoo.files import atomic_directory
from zoo.peft.block_selection import auto_count
from zoo.peft.engine import peft_state
from zoo.peft.report import ParameterReport
from zoo.tasks.train_tasks import TASK_BUILDERS, TaskBuilder, TaskRequest
from zoo.train.task import TrainTask, dataset_size

SPLIT_KEYS = {"train": "train_split", "val": "val_split", "test": "test_split"}


@dataclass(frozen=True)
class Resolved:
    """The registry entries a configuration names."""

    backbone: BackboneSpec
    dataset: DatasetSpec
    task_kind: str
    builder: TaskBuilder
    input_transform: InputTransform | None = None
    """What every input goes through before the model sees it, as the dataset's options ask
    (``data.options.residues=1-56``): applied to each split here and recorded with the run."""


@dataclass
class BuiltRun:
    config: RunConfig
    resolved: Resolved
    model: nn.Module
    task: TrainTask
    datasets: dict[str, Dataset] = field(default_factory=dict)
    """By role: ``train``, ``val``, ``test`` (those the config asks for)."""
    data_dir: Path | None = None
    sources: dict[str, SplitSource] = field(default_factory=dict)
    """By role: the file each dataset was read from, its rows and checksum (for the model card)."""
    layer_selection: dict[str, Any] | None = None
    """With ``method.layers=auto:K``: every block's importance and the blocks chosen."""


def _lookup(registry: Any, name: str, key: str) -> Any:
    try:
        return registry.get(name)
    except UnknownNameError as error:
        raise ConfigError(f"{key}: {error}") from None


def resolve(config: RunConfig) -> Resolved:
    """Look up every name the configuration uses and check they fit together (no weights, no data)."""
    backbone = _lookup(BACKBONES, config.backbone.name, "backbone.name")
    dataset = _lookup(DATASETS, config.data.name, "data.name")
    kind = config.task.kind or dataset.task
    builder = _lookup(TASK_BUILDERS, kind, "task.kind")
    if kind != dataset.task:
        raise ConfigError(
            f"task.kind={kind!r} does not fit dataset {dataset.name}, whose items are for {dataset.task}; "
            f"drop task.kind or choose a {kind} dataset (`zoo ls datasets`)"
        )
    for role, key in SPLIT_KEYS.items():
        split = getattr(config.data, key)
        if split is not None and split not in dataset.splits:
            raise ConfigError(
                f"data.{key}={split!r}: dataset {dataset.name} has the splits {', '.join(dataset.splits)}"
                + ("" if role == "train" else f"; use null for no {role} split")
            )
    transform, _ = split_transform_options(dataset.input_transform, config.data.options)
    return Resolved(backbone, dataset, kind, builder, transform)


# -- data ------------------------------------------------------------------------------
def fixture_root(spec: DatasetSpec) -> Path:
    """A data root holding the dataset's synthetic fixture, written on first use."""
    base = cache_dir("fixtures")
    root = base / spec.name
    if not root.exists():
        # A reader sees the whole fixture or none; when two processes race, the first one's stays.
        with atomic_directory(root, replace=False) as staging:
            spec.make_fixture(staging / (spec.folder or "data"))
    return root


def _data_hint(config: RunConfig, spec: DatasetSpec) -> str:
    root = data_root(config.data.root)
    present = []  # datasets of the same kind whose files are under this root (e.g. a local subset)
    for name in DATASETS.names():
        other = DATASETS.get(name)
        if (
            name != spec.name
            and other.domain == spec.domain
            and other.task == spec.task
            and other.folder
            and other.files
        ):
            if local_copy_present(other, dataset_dir(other, root)):
                present.append(name)
    where = f"{spec.folder}/" if spec.folder else ""
    files = ", ".join(where + f.path for f in spec.files) if spec.files else f"the files of {spec.name}"
    lines = [
        "To get the data:",
        f"  - point the data root at a folder holding {files}: ZOO_DATA_DIR=/path/to/data zoo train ..., "
        f"or the override data.root=/path/to/data",
    ]
    if spec.files:
        lines.append(f"  - or let zoo download it (data.download=true, needs network access): {spec.files[0].url}")
    if present:
        lines.append(f"  - {root} already has {', '.join(present)}: add data.name={present[0]}")
    if not config.tiny:
        lines.append("  - or run scale=tiny for a smoke run on synthetic data")
    return "\n".join(lines)


def load_split(config: RunConfig, resolved: Resolved, split: str) -> tuple[Dataset, Path | None]:
    dataset, directory, _ = load_split_source(config, resolved, split)
    return dataset, directory


def load_split_source(config: RunConfig, resolved: Resolved, split: str) -> tuple[Dataset, Path | None, SplitSource]:
    """The split, its folder, and what it was read from."""
    spec = resolved.dataset
    # the options that choose the input transform are not the loader's; resolved.input_transform is applied
    _, options = split_transform_options(spec.input_transform, config.data.options)
    directory: Path | None
    try:
        if config.tiny:
            directory = fixture_root(spec) / (spec.folder or "data")
            with warnings.catch_warnings():  # a synthetic fixture is never the canonical file; no need to say so
                warnings.simplefilter("ignore", ChecksumWarning)
                dataset = spec.load(directory, split, **options)
            source = describe_split(spec, dataset, split, directory)
            return with_input_transform(dataset, resolved.input_transform), directory, source
        directory = dataset_dir(spec, config.data.root) if spec.folder or config.data.root else None
        dataset, differing = load_noting_checksums(
            lambda: load_dataset(spec.name, split, config.data.root, allow_download=config.data.download, **options)
        )
        source = describe_split(spec, dataset, split, directory, differing)
        return with_input_transform(dataset, resolved.input_transform), directory, source
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise ConfigError(f"data.options: dataset {spec.name} does not take {error}") from None
    except (MissingDataError, DownloadError, FileNotFoundError) as error:
        # Only data that is not there gets the ways to get it; a file that is there but malformed is named
        # by its own error, and downloading would not change it.
        raise DataError(f"{error}\n{_data_hint(config, spec)}") from None


def _subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= dataset_size(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(dataset_size(dataset), generator=generator)[:limit].sort().values.tolist()
    return Subset(dataset, indices)


def load_datasets(
    config: RunConfig, resolved: Resolved, roles: tuple[str, ...] = ("train", "val", "test")
) -> tuple[dict[str, Dataset], Path | None, dict[str, SplitSource]]:
    datasets: dict[str, Dataset] = {}
    sources: dict[str, SplitSource] = {}
    directory = None
    for role in roles:
        split = getattr(config.data, SPLIT_KEYS[role])
        if split is None:
            continue
        dataset, directory, sources[role] = load_split_source(config, resolved, split)
        limit = config.data.max_train_examples if role == "train" else config.data.max_eval_examples
        datasets[role] = _subset(dataset, limit, config.train.seed)
    return datasets, directory, sources


def num_outputs(config: RunConfig, resolved: Resolved, train_set: Dataset | None = None) -> int | None:
    if config.task.num_outputs is not None:
        return config.task.num_outputs
    if resolved.task_kind == "regression":
        return 1
    if resolved.dataset.num_classes is not None:
        return resolved.dataset.num_classes
    train_set = getattr(train_set, "dataset", train_set)  # through a Subset (data.max_train_examples)
    for attribute in ("num_classes", "classes", "label_names"):
        value = getattr(train_set, attribute, None)
        if value is not None:
            return value if isinstance(value, int) else len(value)
    if resolved.builder.needs_num_outputs:
        if train_set is None:
            return None
        raise ConfigError(
            f"dataset {resolved.dataset.name} does not say how many classes it has: set task.num_outputs=N"
        )
    return None


# -- model -----------------------------------------------------------------------------
def build_backbone(config: RunConfig, resolved: Resolved, tiny: bool | None = None) -> nn.Module:
    tiny = config.tiny if tiny is None else tiny
    options = {**resolved.builder.backbone_options, **config.backbone.options}
    pretrained = False if tiny else config.backbone.pretrained
    try:
        return create_backbone(
            resolved.backbone.name, pretrained=pretrained, scale="tiny" if tiny else "default", **options
        )
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise ConfigError(f"backbone.options: backbone {resolved.backbone.name} does not take {error}") from None
    except PretrainedUnavailable as error:
        raise PretrainedUnavailable(
            f"{error}\nFrom the command line: backbone.pretrained=/path/to/checkpoint, or scale=tiny for a smoke run "
            f"(random weights, synthetic data). zoo never switches to random weights by itself."
        ) from None


def build_model(
    config: RunConfig,
    resolved: Resolved,
    outputs: int | None,
    apply_method: bool = True,
    tiny: bool | None = None,
) -> tuple[nn.Module, TrainTask]:
    """Backbone + task model (+ the PEFT method); seeded, so a tiny random base is the same every time."""
    torch.manual_seed(config.train.seed)
    backbone = build_backbone(config, resolved, tiny)
    request = TaskRequest(num_outputs=outputs, main_metric=config.task.main_metric, options=dict(config.task.options))
    model, task = resolved.builder.build(backbone, request)
    if apply_method:
        try:
            zp.apply(model, config.method.name, structure=resolved.backbone.structure, config=config.method)
        except ConfigError as error:
            raise ConfigError(f"method {config.method.name} on backbone {resolved.backbone.name}: {error}") from None
    return model, task


def build_run(config: RunConfig, roles: tuple[str, ...] = ("train", "val", "test")) -> BuiltRun:
    """Datasets first (cheap to check), then the backbone, the task model and the method."""
    resolved = resolve(config)
    datasets, directory, sources = load_datasets(config, resolved, roles)
    outputs = num_outputs(config, resolved, datasets.get("train") or next(iter(datasets.values()), None))
    selection = None
    if auto_count(config.method.options.get("layers")) is not None:
        config, selection = choose_layers(config, resolved, outputs, datasets.get("train"))
    model, task = build_model(config, resolved, outputs)
    return BuiltRun(config, resolved, model, task, datasets, directory, sources, selection)


def choose_layers(
    config: RunConfig, resolved: Resolved, outputs: int | None, train_set: Dataset | None
) -> tuple[RunConfig, dict[str, Any]]:
    """``method.layers=auto:K``: the method on every block, each block's importance on a few training
    batches, then the config with the K most important block indices in ``method.layers``."""
    from zoo.experiment.layer_selection import block_importance, most_important

    count = auto_count(config.method.options["layers"])
    if count is None:
        raise ConfigError(f"method.layers={config.method.options['layers']!r}: choose_layers needs auto:K")
    if train_set is None:
        raise ConfigError(
            f"method.layers=auto:{count} measures block importance on the training split, and there is none"
        )
    everywhere = config.with_method_options(layers=None)
    model, task = build_model(everywhere, resolved, outputs)
    state = peft_state(model)
    if state is None or state.structure is None:
        raise ConfigError(
            f"method.layers=auto:{count}: no structure description finds this backbone's blocks; "
            f"register one (zoo.peft.register_structure) or list the layers"
        )
    blocks = state.structure.block_names(model)
    if count > len(blocks):
        raise ConfigError(f"method.layers=auto:{count}: this backbone has {len(blocks)} blocks")
    scores = block_importance(
        model, task, train_set, blocks, batch_size=config.train.batch_size, seed=config.train.seed
    )
    chosen = most_important(scores, count)
    selected = config.with_method_options(layers=chosen)
    return selected, {"rule": f"auto:{count}", "blocks": blocks, "importance": scores, "chosen": chosen}


def check_method_applies(config: RunConfig) -> ParameterReport:
    """Apply the method to the tiny variant of the backbone (random weights, nothing loaded): a method
    that does not fit the backbone's structure fails here, as it would at full size."""
    resolved = resolve(config)
    outputs = num_outputs(config, resolved) or 2
    model, _ = build_model(config, resolved, outputs, tiny=True)
    return zp.parameter_report(model)


def data_status(config: RunConfig, resolved: Resolved) -> str:
    """Where the data would be read from, without reading or downloading it."""
    spec = resolved.dataset
    if config.tiny:
        return "synthetic fixture (scale=tiny), written to the zoo cache on first use"
    if spec.folder is None and config.data.root is None:
        return f"missing: dataset {spec.name} reads your own files; set data.root=/path/to/them"
    directory = dataset_dir(spec, config.data.root)
    missing = [f for f in spec.files if not (directory / f.path).exists()]
    if not spec.files:
        return f"present at {directory}" if directory.exists() else f"missing: {directory} does not exist"
    if not missing or local_copy_present(spec, directory):
        return f"present at {directory}"
    what = ", ".join(f.path for f in missing)
    if config.data.download:
        return f"{what} not under {directory}: would be downloaded from {missing[0].url}"
    return f"missing: {what} not under {directory} (data.download=false)"


def load_built_run(run_dir: str | os.PathLike, roles: tuple[str, ...] = ()) -> BuiltRun:
    """A finished run rebuilt from its directory: the backbone as ``config.yaml`` says, the adapter
    from ``adapter/``, and the datasets of ``roles`` (e.g. ``("test",)``)."""
    from zoo.experiment.run_dir import ADAPTER_DIR, RUN_FILE, read_config, read_json, recorded_num_outputs

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    adapter = run_dir / ADAPTER_DIR
    if not adapter.is_dir():
        state = read_json(run_dir / RUN_FILE).get("status", "unknown")
        raise ConfigError(
            f"{run_dir} has no {ADAPTER_DIR}/ (run status: {state}); a run writes its adapter when it completes"
            + ("; resume it with zoo train ... --resume" if state != "complete" else "")
        )
    resolved = resolve(config)
    datasets, directory, sources = load_datasets(config, resolved, roles)
    outputs = recorded_num_outputs(run_dir) or num_outputs(config, resolved, datasets.get("train"))
    model, task = build_model(config, resolved, outputs, apply_method=False)
    zp.load_adapter(model, adapter, structure=resolved.backbone.structure)
    return BuiltRun(config, resolved, model.eval(), task, datasets, directory, sources)
