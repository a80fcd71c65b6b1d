"""``push(run_dir, hub)``: publish a finished run's adapter on a hub.

The entry is built from the run directory: the backbone is rebuilt as ``config.yaml`` says to
fingerprint its weights (once, here), the datasets are read again for their files, checksums
and split sizes, and every published file gets its size and sha256. Files are written first and
the index last, atomically (under a lock on a folder hub), so a reader never sees an entry
whose files are missing; a version once published is never overwritten.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo import __version__
from zoo.catalog.download import sha256_of
from zoo.errors import ConfigError, DataError, DownloadError, HubError
from zoo.hub.index import (
    INDEX_FILE,
    add_entry,
    check_name,
    check_version,
    dump_index,
    empty_index,
    next_version,
    parse_index,
)
from zoo.hub.locations import Hub, parse_hub, say_to_stderr

PUBLISHED_FILES = (
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "config.yaml",
    "eval_results.json",
    "README.md",
)


def _weights_source(config, spec) -> dict[str, Any]:
    """Where the base weights came from: the registry's source, and the local checkpoint's revision if known."""
    pretrained = config.backbone.pretrained
    weights = spec.weights
    source = {
        "source": weights.source if weights else None,
        "licence": weights.licence if weights else None,
        "revision": None,
        "scale": "tiny" if config.tiny else "default",
    }
    if config.tiny:
        source.update(source=f"random initialisation (scale=tiny, seed {config.train.seed})", licence=None)
    elif isinstance(pretrained, str) and pretrained not in ("true", "false"):
        match = re.search(r"snapshots/([0-9a-f]{40})", pretrained)
        source["revision"] = match.group(1) if match else None
        package = re.search(r"site-packages/([A-Za-z0-9_]+)/", pretrained)
        if package:
            from importlib import metadata

            try:
                distribution = metadata.packages_distributions().get(package.group(1), [package.group(1)])[0]
                source["local_copy"] = f"Python package {distribution} {metadata.version(distribution)}"
            except (metadata.PackageNotFoundError, IndexError):
                source["local_copy"] = f"Python package {package.group(1)}"
        else:
            source["local_copy"] = "a local checkpoint"
    return source


def _label_names(dataset) -> list[str] | None:
    inner = getattr(dataset, "dataset", dataset)  # through a Subset (data.max_*_examples)
    for attribute in ("label_names", "classes"):
        names = getattr(inner, attribute, None)
        if names is not None and not isinstance(names, int):
            return [str(n) for n in names]
    return None


def describe_run(
    run_dir: Path, name: str | None, version: str, licence: str | None, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The index entry of a finished run (without ``path``) and the files to publish, by hub path."""
    import torch

    from zoo.catalog.backbones import BACKBONES
    from zoo.experiment import load_run
    from zoo.experiment.build import SPLIT_KEYS, build_backbone, load_datasets, resolve
    from zoo.hub.fingerprint import backbone_fingerprint

    run = load_run(run_dir)
    if run.status != "complete":
        raise HubError(
            f"{run_dir} is a {run.status} run; only a complete run (with its adapter and metrics) can be pushed"
        )
    config = run.config
    resolved = resolve(config)
    files = {relative: run_dir / relative for relative in PUBLISHED_FILES if (run_dir / relative).is_file()}
    for required in PUBLISHED_FILES[:2]:
        if required not in files:
            raise HubError(f"{run_dir / required} is missing; a hub publishes adapters as safetensors only")
    name = check_name(name or f"{resolved.backbone.domain}/{config.data.name}-{config.method.name}")
    log(f"{name}@{version}: fingerprinting the base weights of {config.backbone.name}")
    torch.manual_seed(config.train.seed)  # as build_model does, so a tiny random base is the same one
    fingerprint = backbone_fingerprint(build_backbone(config, resolved))
    dataset: dict[str, Any] = {"name": config.data.name, "licence": resolved.dataset.licence, "splits": {}}
    labels = None
    try:
        datasets, _, sources = load_datasets(config, resolved)
    except (
        DataError,
        DownloadError,
        OSError,
    ) as error:  # the data need not be here to publish; say what is not recorded
        log(
            f"{name}: the dataset could not be read again ({type(error).__name__}); its files and sizes are not recorded"
        )
        datasets, sources = {}, {}
    for role, source in sources.items():
        dataset["splits"][role] = {
            "split": source.split,
            "file": source.file.name if source.file else None,
            "rows": source.rows,
            "rows_used": len(datasets[role]),
            "selection": source.selection or None,
            "sha256": source.sha256,
        }
        labels = labels or _label_names(datasets[role])
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
    entry = {
        "name": name,
        "version": version,
        "published": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "zoo_version": __version__,
        "domain": resolved.backbone.domain,
        "task": {
            "kind": resolved.task_kind,
            "num_outputs": run.record.get("num_outputs"),
            "labels": labels,
            "main_metric": run.record.get("main_metric") or config.task.main_metric,
        },
        "backbone": {
            "name": config.backbone.name,
            **_weights_source(config, spec),
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
        "command": run.record.get("command"),
        "licence": licence or (spec.weights.licence if spec.weights else "unspecified"),
        "path": f"{name}/{version}",
        "files": [{"path": p, "size": f.stat().st_size, "sha256": sha256_of(f)} for p, f in files.items()],
    }
    return entry, files


def _copy_atomic(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.chmod(temporary, 0o644)  # a hub folder is meant to be served: readable by a web server
        os.replace(temporary, destination)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _push_folder(hub: Hub, run_dir: Path, name: str | None, version: str | None, licence: str | None, log) -> dict:
    from filelock import FileLock

    from zoo.experiment.run_dir import atomic_write_text

    root = Path(hub.location)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".zoo-push.lock"), timeout=600):
        index_path = root / INDEX_FILE
        index = parse_index(index_path.read_bytes(), str(index_path)) if index_path.is_file() else empty_index()
        entry, files = _describe(run_dir, name, version, licence, index, log)
        for relative, source in files.items():  # files first ...
            _copy_atomic(source, root / entry["path"] / relative)
        atomic_write_text(index_path, dump_index(add_entry(index, entry)))  # ... the index last
        os.chmod(index_path, 0o644)
    return entry


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


def _push_hf(hub: Hub, run_dir: Path, name: str | None, version: str | None, licence: str | None, log) -> dict:
    from zoo.hub.hf import push_to_hf

    return push_to_hf(hub, run_dir, name, version, licence, log, _describe)


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
    if target.kind == "http":
        raise ConfigError(
            f"--hub {hub}: zoo pushes to a folder or to hf://org/repo; to serve a hub over HTTP, push to a folder and "
            f"publish that folder with any static web server"
        )
    entry = (_push_folder if target.kind == "folder" else _push_hf)(target, run_dir, name, version, licence, log)
    log(f"pushed {entry['name']}@{entry['version']} to {target} ({len(entry['files'])} files)")
    return entry
