"""``push(run_dir, hub)``: publish a finished run's adapter on a hub.

The entry is built from the run directory: the backbone is rebuilt as ``config.yaml`` says to
fingerprint its weights (once, here), the datasets are read again for their files, checksums
and split sizes, the adapter predicts a few held-out inputs (the entry's reference predictions,
:mod:`zoo.hub.reference`), and every published file gets its size and sha256. ``config.yaml`` and
``README.md`` are published without the paths of this machine (:mod:`zoo.hub.portable`). Files are
written first and the index last, atomically (under a lock on a folder hub, which also removes the
temporary files of a push that was killed), so a reader never sees an entry whose files are
missing; a version once published is never overwritten.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo import __version__
from zoo.errors import ConfigError, DataError, DownloadError, HubError
from zoo.experiment.labels import label_names
from zoo.hub.index import (
    ADAPTER_FILES,
    check_name,
    check_version,
    next_version,
)
from zoo.hub.locations import parse_hub, say_to_stderr


def _weights_source(config, spec, origin) -> dict[str, Any]:
    """Where the base weights came from, by name: the registry's source, and the package, Hugging Face
    revision or local checkpoint they were read from (never its path)."""
    from zoo.hub.portable import entry_weights

    weights = spec.weights
    source = {
        "source": weights.source if weights else None,
        "licence": weights.licence if weights else None,
        "revision": None,
        "scale": "tiny" if config.tiny else "default",
    }
    if config.tiny:
        source.update(source=f"random initialisation (scale=tiny, seed {config.train.seed})", licence=None)
    elif origin.kind == "random":
        source.update(source="random initialisation (backbone.pretrained=false)", licence=None)
    else:
        source.update(entry_weights(origin))
    return source


def _parameter_report(config, resolved, outputs, record, fingerprint_log):
    """The base fingerprint (of the backbone before anything is added) and the parameter report of the
    model as training built it (the method applied to the same blocks)."""
    import torch

    import zoo.peft as zp
    from zoo.experiment.build import build_backbone
    from zoo.hub.fingerprint import backbone_fingerprint
    from zoo.tasks.train_tasks import TaskRequest

    chosen = (record.get("layer_selection") or {}).get("chosen")
    if chosen is not None:  # method.layers=auto:K chose these blocks when it ran
        config = config.with_method_options(layers=chosen)
    fingerprint_log()
    torch.manual_seed(config.train.seed)  # as build_model does, so a tiny random base is the same one
    backbone = build_backbone(config, resolved)
    fingerprint = backbone_fingerprint(backbone)
    request = TaskRequest(num_outputs=outputs, main_metric=config.task.main_metric, options=dict(config.task.options))
    model, _ = resolved.builder.build(backbone, request)
    zp.apply(model, config.method.name, structure=resolved.backbone.structure, config=config.method)
    return fingerprint, zp.parameter_report(model)


def _reference(run_dir: Path, datasets, labels, log) -> tuple[list[dict[str, Any]], str]:
    """Reference predictions of the adapter as ``zoo.hub.load`` will rebuild it: a few held-out inputs."""
    from zoo.experiment.build import load_built_run
    from zoo.hub.predict import Predictor
    from zoo.hub.reference import held_out_inputs, reference_predictions

    role, inputs, note = held_out_inputs(datasets)
    if not inputs:
        return [], note or "no held-out inputs were read"
    built = load_built_run(run_dir)
    predictor = Predictor(
        built.model, built.model.backbone.collate, built.resolved.task_kind, labels, built.resolved.backbone.domain, ""
    )
    log(f"  reference predictions on {len(inputs)} {role} inputs")
    return reference_predictions(predictor, inputs), note


def _published_texts(run, entry, config, resolved, origin, report, datasets, sources, directory, changed):
    """The published ``config.yaml`` and ``README.md``: the run's, without this machine's paths."""
    from zoo.experiment.model_card import Published, model_card
    from zoo.hub.inputs import looks_like_file
    from zoo.hub.portable import portable_config

    # the card's `zoo predict` example: a reference input that a shell and zoo predict read as plain text
    examples = [
        r["input"]
        for r in entry.get("reference_predictions", [])
        if isinstance(r["input"], str) and r["input"].isprintable() and "\\" not in r["input"]
    ]
    examples = [text for text in examples if not looks_like_file(text)]
    published = Published(
        name=entry["name"],
        version=entry["version"],
        command=entry["command"],
        fingerprint=entry["backbone"]["fingerprint"],
        example=min(examples, key=len) if examples else None,
    )
    training = {
        "steps": run.record.get("steps"),
        "epochs": run.record.get("epochs"),
        "stopped_early": run.record.get("stopped_early"),
        "seconds": run.record.get("train_seconds"),
    }
    card = model_card(
        recipe=run.recipe or "config.yaml",
        command=entry["command"],
        config=config,
        backbone_spec=resolved.backbone,
        dataset_spec=resolved.dataset,
        task_kind=resolved.task_kind,
        main_metric=entry["task"]["main_metric"],
        report=report,
        results=run.results,
        training=training,
        data_dir=directory,
        run_dir=run.dir,
        sources=sources,
        rows_used={role: len(dataset) for role, dataset in datasets.items()},
        changed=changed,
        published=published,
    )
    return portable_config(config, origin, run.recipe, changed), card


def _described_changes(run, config) -> list[str]:
    from zoo.experiment.config import load_config
    from zoo.experiment.model_card import described_changes

    try:
        original = load_config(run.recipe, {"scale": config.scale} if config.scale != "default" else {})
    except (ConfigError, OSError):  # a recipe file that is not here any more: nothing to compare with
        return []
    return described_changes(original, config)


def describe_run(
    run_dir: Path, name: str | None, version: str, licence: str | None, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The index entry of a finished run and the published files' contents, by hub path."""
    from zoo.catalog.backbones import BACKBONES
    from zoo.experiment import load_run
    from zoo.experiment.build import SPLIT_KEYS, load_datasets, num_outputs, resolve
    from zoo.experiment.model_card import data_file, weights_origin
    from zoo.hub.portable import machine_path_markers, machine_paths, portable_command

    run = load_run(run_dir)
    if run.status != "complete":
        raise HubError(
            f"{run_dir} is a {run.status} run; only a complete run (with its adapter and metrics) can be pushed"
        )
    config = run.config
    resolved = resolve(config)
    for required in ADAPTER_FILES:
        if not (run_dir / required).is_file():
            raise HubError(f"{run_dir / required} is missing; a hub publishes adapters as safetensors only")
    name = check_name(name or f"{resolved.backbone.domain}/{config.data.name}-{config.method.name}")
    dataset: dict[str, Any] = {"name": config.data.name, "licence": resolved.dataset.licence, "splits": {}}
    labels = None
    try:
        datasets, directory, sources = load_datasets(config, resolved)
    except (DataError, DownloadError, OSError) as error:  # the data need not be here to publish; say what is not
        log(
            f"{name}: the dataset could not be read again ({type(error).__name__}); its files and sizes are not recorded"
        )
        datasets, directory, sources = {}, None, {}
    for role, source in sources.items():
        dataset["splits"][role] = {
            "split": source.split,
            "file": data_file(source, directory),
            "rows": source.rows,
            "rows_used": len(datasets[role]),
            "selection": source.selection or None,
            "sha256": source.sha256,
        }
        labels = labels or label_names(datasets[role])
    outputs = run.record.get("num_outputs") or num_outputs(config, resolved, datasets.get("train"))
    fingerprint, report = _parameter_report(
        config, resolved, outputs, run.record, lambda: log(f"{name}@{version}: fingerprinting the base weights")
    )
    metrics = {}
    for role, result in run.results.items():
        split = getattr(config.data, SPLIT_KEYS[role], None) if role in SPLIT_KEYS else role
        metrics[role] = {
            "split": split,
            "metrics": result.get("metrics", {}),
            "note": result.get("note"),
            "examples": dataset["splits"].get(role, {}).get("rows_used"),
        }
    spec = BACKBONES.get(config.backbone.name)
    origin = weights_origin(config, spec)
    command, paths_left = portable_command(run.record.get("command"), run.recipe, name)
    if paths_left:
        log(f"{name}: the training command still names paths of this machine: {' '.join(paths_left)}")
    references, note = _reference(run_dir, datasets, labels, log)
    entry = {
        "name": name,
        "version": version,
        "published": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "zoo_version": __version__,
        "domain": resolved.backbone.domain,
        "task": {
            "kind": resolved.task_kind,
            "num_outputs": outputs,
            "labels": labels,
            "main_metric": run.record.get("main_metric") or config.task.main_metric,
        },
        "backbone": {
            "name": config.backbone.name,
            **_weights_source(config, spec, origin),
            "options": dict(config.backbone.options),
            "fingerprint": fingerprint,
        },
        "method": {
            "name": config.method.name,
            "config": dict(config.method.options),
            "trainable_parameters": run.record.get("trainable_parameters"),
        },
        "dataset": dataset,
        "metrics": metrics,
        "recipe": run.recipe,
        "command": command,
        "licence": licence or (spec.weights.licence if spec.weights else "unspecified"),
        "path": f"{name}/{version}",
        "reference_predictions": references,
        **({"reference_predictions_note": note} if note else {}),
    }
    changed = _described_changes(run, config)
    config_text, card = _published_texts(
        run, entry, config, resolved, origin, report, datasets, sources, directory, changed
    )
    contents = {relative: (run_dir / relative).read_bytes() for relative in ADAPTER_FILES}
    contents["config.yaml"] = config_text.encode()
    if (run_dir / "eval_results.json").is_file():
        contents["eval_results.json"] = (run_dir / "eval_results.json").read_bytes()
    contents["README.md"] = card.encode()
    markers = machine_path_markers(run_dir, directory)
    for relative in ("config.yaml", "README.md"):
        if found := machine_paths(contents[relative].decode(), markers):
            log(f"{name}: the published {relative} names paths of this machine ({', '.join(found)})")
    entry["files"] = [
        {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for path, data in contents.items()
    ]
    return entry, contents


def _describe(run_dir, name, version, licence, index, log):
    """The entry, with the version checked against the index before anything is written."""
    from zoo.experiment import load_run

    if name is None:
        run = load_run(run_dir)
        from zoo.experiment.build import resolve

        name = f"{resolve(run.config).backbone.domain}/{run.config.data.name}-{run.config.method.name}"
    check_name(name)
    version = check_version(version) if version else next_version(index, name)
    if version in index["adapters"].get(name, {}).get("versions", {}):
        raise HubError(
            f"{name}@{version} is already published on this hub and is never overwritten; push with another --version"
        )
    return describe_run(run_dir, name, version, licence, log)


def push(
    run_dir: str | os.PathLike,
    hub: str | os.PathLike,
    name: str | None = None,
    version: str | None = None,
    licence: str | None = None,
    log: Callable[[str], None] | None = say_to_stderr,
) -> dict[str, Any]:
    """Publish ``run_dir``'s adapter on ``hub`` (a folder or ``hf://org/repo``) as ``name@version``
    (default: ``<domain>/<dataset>-<method>``, the next free integer version); returns the entry."""
    log = log or (lambda _message: None)
    run_dir = Path(run_dir)
    target = parse_hub(hub)
    entry = target.publish(lambda index: _describe(run_dir, name, version, licence, index, log), log)
    log(f"pushed {entry['name']}@{entry['version']} to {target} ({len(entry['files'])} files)")
    return entry
