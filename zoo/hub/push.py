"""``push(run_dir, hub)``: publish a finished run's adapter on a hub.

The entry is made from the run directory alone: its record (``run.json``, written by the runner when
the run ended: the base weights' fingerprint, the data files with their rows and sha256, the class
names, the parameter counts, and the model's outputs on a few held-out inputs, which become the
entry's reference predictions, :mod:`zoo.hub.reference`), its metrics and its adapter. Nothing is
built and no data is read. Every published file gets its size and sha256. ``config.yaml`` and
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
from zoo.errors import HubError
from zoo.hub.index import (
    ADAPTER_FILES,
    check_name,
    check_version,
    next_version,
)
from zoo.hub.locations import parse_hub, say_to_stderr


def _weights_source(config, origin) -> dict[str, Any]:
    """Where the base weights came from, by name: the registry's source, and the package, Hugging Face
    revision or local checkpoint they were read from (never its path)."""
    from zoo.hub.portable import entry_weights

    scale = "tiny" if config.tiny else "default"
    source = {"source": origin.source, "licence": origin.licence, "revision": None, "scale": scale}
    if config.tiny:
        source.update(source=f"random initialisation (scale=tiny, seed {config.train.seed})", licence=None)
    elif origin.kind == "random":
        source.update(source="random initialisation (backbone.pretrained=false)", licence=None)
    else:
        source.update(entry_weights(origin))
    return source


def _reference_predictions(record) -> tuple[list[dict[str, Any]], str]:
    """The entry's reference predictions: the outputs the runner recorded, read as ``Predictor.predict``
    reads a model's outputs, with the entry's class names."""
    import torch

    from zoo.hub.predict import read_outputs
    from zoo.hub.reference import as_json

    reference = record.reference
    if reference is None or not reference.inputs:
        return [], reference.note if reference else "the run recorded no reference outputs"
    outputs = read_outputs(torch.tensor(reference.outputs), record.task.kind, record.task.labels)
    return as_json(reference.inputs, outputs), reference.note


def _card_example(references: list[dict[str, Any]]) -> str | None:
    """The card's ``zoo predict`` example: a reference input that a shell and zoo predict read as plain text."""
    texts = [r["input"] for r in references if isinstance(r["input"], str)]
    texts = [text for text in texts if text.isprintable() and "\\" not in text]
    # no suffix and no separator: no file by any domain's reading, so the domains need not be loaded to ask
    separators = tuple(s for s in ("/", os.sep, os.altsep) if s)
    plain = [text for text in texts if not Path(text).suffix and not any(s in text for s in separators)]
    if not plain:
        from zoo.hub.inputs import looks_like_file

        plain = [text for text in texts if not looks_like_file(text)]
    return min(plain, key=len) if plain else None


def complete_run(run_dir: Path):
    """The run of ``run_dir``, refused unless it is complete and its record has what an entry needs."""
    from zoo.experiment import load_run

    run = load_run(run_dir)
    if run.status != "complete":
        raise HubError(
            f"{run_dir} is a {run.status} run; only a complete run (with its adapter and metrics) can be pushed"
        )
    if run.record.written_by_older_zoo:
        raise HubError(
            f"{run_dir} was trained by an older zoo, whose run.json does not record the base weights' fingerprint, "
            f"the data files and the reference outputs a hub entry needs; train it again with this zoo "
            f"(`{run.record.command or 'zoo train RECIPE'}`) and push the new run"
        )
    for required in ADAPTER_FILES:
        if not (run_dir / required).is_file():
            raise HubError(f"{run_dir / required} is missing; a hub publishes adapters as safetensors only")
    return run


def table_cell_machine(run_dir: Path, threads: int | None) -> str | None:
    """The machine of a ``zoo reproduce`` cell whose run.json predates the record's ``machine``: the hardware
    its ``result.json`` row recorded when the cell ended (:mod:`zoo.results.rows`); None for any other run."""
    import json

    from zoo.experiment.machine import machine_text

    try:
        hardware = json.loads((run_dir / "result.json").read_text()).get("hardware")
    except (OSError, ValueError):
        return None
    return machine_text("cpu", threads, hardware) if isinstance(hardware, dict) and not hardware.get("gpus") else None


def default_name(run) -> str:
    """``<domain>/<dataset>-<method>`` of a run."""
    return f"{run.record.backbone.domain}/{run.config.data.name}-{run.config.method.name}"


def describe_run(
    run_dir: Path,
    name: str | None,
    version: str,
    licence: str | None,
    log: Callable[[str], None],
    baseline: Path | None = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The index entry of a finished run and the published files' contents, by hub path."""
    from zoo.experiment.model_card import Published, model_card
    from zoo.hub.portable import machine_path_markers, machine_paths, portable_command, portable_config
    from zoo.hub.push_metrics import baseline_comparison, comparison_text, interval_text, test_interval

    run = complete_run(run_dir)
    config, record = run.config, run.record
    if record.training is not None and record.training.machine is None:
        record.training.machine = table_cell_machine(run_dir, config.train.threads)
    name = check_name(name or default_name(run))
    splits = record.data.splits
    metrics = {}
    for role, result in run.results.items():
        metrics[role] = {
            # the dataset's split: recorded for the run's own roles; `zoo eval --split` keys results by split
            "split": splits[role].split if role in splits else role,
            "metrics": result.get("metrics", {}),
            "note": result.get("note"),
            "examples": splits[role].rows_used if role in splits else None,
        }
    interval = test_interval(run_dir, record.task.main_metric)
    if interval and "test" in metrics:
        metrics["test"]["interval"] = interval
    compared = baseline_comparison(run, complete_run(baseline), baseline) if baseline is not None else None
    origin = record.backbone.weights
    command, paths_left = portable_command(record.command, run.recipe, name)
    if paths_left:
        log(f"{name}: the training command still names paths of this machine: {' '.join(paths_left)}")
    references, note = _reference_predictions(record)
    entry = {
        "name": name,
        "version": version,
        "published": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "zoo_version": __version__,
        "domain": record.backbone.domain,
        "task": {
            "kind": record.task.kind,
            "num_outputs": record.task.num_outputs,
            "labels": record.task.labels,
            "main_metric": record.task.main_metric,
        },
        "backbone": {
            "name": config.backbone.name,
            **_weights_source(config, origin),
            "options": dict(config.backbone.options),
            "fingerprint": record.backbone.fingerprint,
        },
        # the method's options are stated once, in adapter/adapter_config.json, which loading reads
        "method": {"name": config.method.name, "trainable_parameters": record.parameters.trainable},
        "dataset": {
            "name": record.data.name,
            "licence": record.data.licence,
            "splits": {
                role: split.model_dump(include={"split", "file", "rows", "rows_used", "selection", "sha256"})
                for role, split in splits.items()
            },
        },
        **(
            {"input_transform": record.input_transform.model_dump(include={"name", "parameters"})}
            if record.input_transform
            else {}
        ),
        "metrics": metrics,
        "recipe": run.recipe,
        "command": command,
        "licence": licence or origin.licence or "unspecified",
        "path": f"{name}/{version}",
        "reference_predictions": references,
        **({"reference_predictions_note": note} if note else {}),
        **({"compared_with": compared} if compared else {}),
    }
    published = Published(
        name=name,
        version=version,
        command=command,
        fingerprint=record.backbone.fingerprint,
        example=_card_example(references),
        interval=" ".join(t for t in (interval_text(interval, metrics.get("test")), comparison_text(compared)) if t)
        or None,
    )
    card = model_card(config, record, run_dir, published, results=run.results)
    contents = {relative: (run_dir / relative).read_bytes() for relative in ADAPTER_FILES}
    contents["config.yaml"] = portable_config(config, origin, run.recipe, record.changed).encode()
    if (run_dir / "eval_results.json").is_file():
        contents["eval_results.json"] = (run_dir / "eval_results.json").read_bytes()
    contents["README.md"] = card.encode()
    markers = machine_path_markers(run_dir, record.data.directory)
    for relative in ("config.yaml", "README.md"):
        if found := machine_paths(contents[relative].decode(), markers):
            log(f"{name}: the published {relative} names paths of this machine ({', '.join(found)})")
    entry["files"] = [
        {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for path, data in contents.items()
    ]
    return entry, contents


def _describe(run_dir, name, version, licence, index, log, baseline=None):
    """The entry, with the version checked against the index before anything is written."""
    if name is None:
        name = default_name(complete_run(run_dir))
    check_name(name)
    version = check_version(version) if version else next_version(index, name)
    if version in index["adapters"].get(name, {}).get("versions", {}):
        raise HubError(
            f"{name}@{version} is already published on this hub and is never overwritten; push with another --version"
        )
    return describe_run(run_dir, name, version, licence, log, baseline)


def push(
    run_dir: str | os.PathLike,
    hub: str | os.PathLike,
    name: str | None = None,
    version: str | None = None,
    licence: str | None = None,
    log: Callable[[str], None] | None = say_to_stderr,
    baseline: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Publish ``run_dir``'s adapter on ``hub`` (a folder or ``hf://org/repo``) as ``name@version``
    (default: ``<domain>/<dataset>-<method>``, the next free integer version); returns the entry.
    ``baseline``: a run of full fine-tuning on the same data and test rows, which the entry and the card
    compare the adapter with (:func:`zoo.hub.push_metrics.baseline_comparison`)."""
    log = log or (lambda _message: None)
    run_dir = Path(run_dir)
    target = parse_hub(hub)
    baseline_dir = Path(baseline) if baseline is not None else None
    entry = target.publish(lambda index: _describe(run_dir, name, version, licence, index, log, baseline_dir), log)
    log(f"pushed {entry['name']}@{entry['version']} to {target} ({len(entry['files'])} files)")
    return entry
