"""Adapters of one method on one backbone combined into a new run directory (``zoo merge``).

Each input is a run directory (or its ``adapter/``), a pulled adapter folder, or a hub name, pulled as
``zoo predict`` pulls it. The base model is built once, as ``zoo predict`` builds the first input's. The
output is a new run directory (``config.yaml``: the first input's with the merged method; ``run.json``,
whose ``merge`` section says what was merged; ``adapter/``) that ``zoo predict`` and ``zoo eval`` read.
When the inputs' heads differ (adapters of different tasks), each task keeps its own head and the output
holds one such run directory per task, ``OUT/<dataset>/``, all with the same merged update.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.experiment.config import RunConfig
    from zoo.experiment.record import RunRecord
    from zoo.hub.pull import PulledAdapter
    from zoo.peft.arithmetic import MergedAdapter


@dataclass
class MergeInput:
    given: str
    folder: Path
    """What ``zoo predict`` loads: the run directory or the pulled adapter's folder."""
    adapter_dir: Path
    config: RunConfig
    record: RunRecord


def _pulled_input(given: str, pulled: PulledAdapter) -> MergeInput:
    from zoo.experiment.run_dir import published_record
    from zoo.hub.predict import _check_adapter_folder
    from zoo.hub.pulled_config import read_pulled_config

    _check_adapter_folder(pulled)  # the trust rules zoo predict applies to a pulled folder
    config = read_pulled_config(pulled.dir, pulled.entry, pulled.name)
    return MergeInput(given, pulled.dir, pulled.adapter_dir, config, published_record(pulled.dir))


def resolve_input(given: str, hub: str | None) -> MergeInput:
    """A run directory (or its adapter/), a pulled adapter folder, or a hub name (pulled)."""
    from zoo.errors import ConfigError
    from zoo.experiment.run_dir import ADAPTER_DIR, is_run_dir, read_config, read_record
    from zoo.hub.index import validate_entry
    from zoo.hub.pull import ENTRY_FILE, PulledAdapter, pull

    path = Path(given)
    if path.name == ADAPTER_DIR and (is_run_dir(path.parent) or (path.parent / ENTRY_FILE).is_file()):
        path = path.parent
    if is_run_dir(path):
        if not (path / ADAPTER_DIR).is_dir():
            raise ConfigError(f"{path} has no {ADAPTER_DIR}/: the run has not finished; merge finished runs")
        return MergeInput(given, path, path / ADAPTER_DIR, read_config(path), read_record(path))
    if (path / ENTRY_FILE).is_file():
        entry = validate_entry(json.loads((path / ENTRY_FILE).read_text()), source=str(path / ENTRY_FILE))
        return _pulled_input(given, PulledAdapter(path, entry, str(path)))
    if path.exists():
        raise ConfigError(
            f"{path} is neither a run directory nor a pulled adapter folder; an adapter folder alone does not say "
            f"which backbone and task it was made for: pass its run directory or its hub name"
        )
    return _pulled_input(given, pull(given, hub))


def _backbone(item: MergeInput) -> tuple[str, str, str, str | None]:
    backbone = item.config.backbone
    fingerprint = item.record.backbone.fingerprint if item.record.backbone else None
    return backbone.name, json.dumps(backbone.options, sort_keys=True), item.config.scale, fingerprint


def check_same_backbone(inputs: list[MergeInput]) -> None:
    from zoo.errors import ConfigError

    first = _backbone(inputs[0])
    for item in inputs[1:]:
        other = _backbone(item)
        both_recorded = first[3] is not None and other[3] is not None
        # Equal recorded fingerprints are the same weights, whatever options read them (a tokenizer's
        # max_length): each task keeps its own configuration. Without both, the options must agree.
        same = first[3] == other[3] and (first[0], first[2]) == (other[0], other[2])
        if not (same if both_recorded else other[:3] == first[:3]):
            raise ConfigError(
                f"adapters made on different backbones cannot be merged: {inputs[0].given} was trained on "
                f"{first[0]} ({first[2]} scale, weights {first[3] or 'unrecorded'}), {item.given} on {other[0]} "
                f"({other[2]} scale, weights {other[3] or 'unrecorded'})"
            )


def merge_runs(
    adapters: list[str],
    weights: list[float],
    out: str | os.PathLike,
    method: str = "linear",
    density: float | None = None,
    rank: int | None = None,
    seed: int = 0,
    hub: str | None = None,
    backbone_weights: str | os.PathLike | None = None,
    command: str = "zoo.hub.merging.merge_runs",
) -> tuple[MergedAdapter, dict[str, Any], list[str]]:
    """Merge ``adapters`` into the new folder ``out``; returns the merge, its details (``run.json``'s
    ``merge``) and the tasks that got a run directory of their own (none when the heads are shared)."""
    import zoo.peft as zp
    from zoo.errors import ConfigError
    from zoo.files import atomic_directory
    from zoo.hub.predict import load
    from zoo.peft.arithmetic import check_merge, merge_adapter_dirs
    from zoo.peft.engine import peft_state

    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists; zoo merge writes a new folder: choose another name")
    inputs = [resolve_input(given, hub) for given in adapters]
    check_merge([item.adapter_dir for item in inputs], weights, method, density, rank)
    check_same_backbone(inputs)
    model = load(inputs[0].folder, hub=hub, backbone_weights=backbone_weights).model
    state = peft_state(model)
    structure = state.structure if state else None
    zp.delete_adapter(model, zp.DEFAULT_ADAPTER)  # the base model, on which every input is read
    merged = merge_adapter_dirs(
        model,
        [item.adapter_dir for item in inputs],
        weights,
        method,
        density=density,
        rank=rank,
        seed=seed,
        tasks=[item.config.data.name for item in inputs],
        structure=structure,
    )
    tasks: dict[str, MergeInput] = {}
    for item in inputs:
        tasks.setdefault(item.config.data.name, item)  # a task's run directory takes its first input's config
    details = _merge_details(inputs, weights, method, density, seed, merged)
    with atomic_directory(out, replace=False) as staging:
        if merged.shared_head:
            _write_run(staging, inputs[0], merged, None, command, details)
        else:
            for task, item in tasks.items():
                _write_run(staging / task, item, merged, task, command, details)
    return merged, details, [] if merged.shared_head else list(tasks)


def _merge_details(
    inputs: list[MergeInput],
    weights: list[float],
    method: str,
    density: float | None,
    seed: int,
    merged: MergedAdapter,
) -> dict[str, Any]:
    errors = list(merged.errors.values())
    return {
        "inputs": [item.given for item in inputs],
        "weights": weights,
        "method": method,
        "density": density,
        "seed": seed if method.startswith("dare") else None,
        "adapter_method": merged.method,
        "rank": merged.rank,
        "layers": len(merged.config.target_modules or []),
        "relative_error": {"max": max(errors, default=0.0), "mean": sum(errors) / len(errors) if errors else 0.0},
    }


def _write_run(
    folder: Path, source: MergeInput, merged: MergedAdapter, task: str | None, command: str, details: dict
) -> None:
    """A run directory that zoo predict and zoo eval read: the source's task and data, the merged adapter."""
    from zoo import __version__
    from zoo.experiment.record import RunRecord, dump_record
    from zoo.experiment.run_dir import ADAPTER_DIR, CONFIG_FILE, RUN_FILE, now, write_json
    from zoo.files import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    merged.save(folder / ADAPTER_DIR, task)
    config = source.config.model_copy(
        update={
            "method": merged.config,
            "description": f"{details['method']} merge of {', '.join(details['inputs'])} ({merged.method})",
        }
    )
    atomic_write_text(folder / CONFIG_FILE, f"# made by {command}\n" + config.to_yaml())
    at = now()
    record = RunRecord(
        status="complete",
        command=command,
        started=at,
        finished=at,
        updated=at,
        zoo_version=__version__,
        config=config.to_dict(),
        task=source.record.task,
        backbone=source.record.backbone,
        data=source.record.data,
    )
    write_json(folder / RUN_FILE, {**dump_record(record), "merge": details})
