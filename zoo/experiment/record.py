"""``run.json`` typed: what a run was, written once by the runner when the run ends.

While a run trains, ``run.json`` holds its progress (status, command, pid, host, start time,
resumes, the error of a failed run). When it ends the runner adds everything it knows then, with
the backbone and the data still in memory: the resolved configuration, the base weights'
fingerprint and origin, each split's file, rows and sha256, the class names, the metrics, the
parameter counts, peak memory, time, package versions, and the raw outputs of the model on a few
held-out inputs. The model card, ``zoo push``, ``zoo info``, the results store and ``zoo.load_run``
read this record; none of them builds the backbone or reads the data again.

A run written by an older zoo (flat keys, ``record_version`` absent) is read into the same model,
without what that layout did not record (fingerprint, class names, reference outputs).
"""

from __future__ import annotations

import functools
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoo.errors import ConfigError

RECORD_VERSION = 2


class RecordModel(BaseModel):
    """Keys a newer zoo adds are ignored; every key read is declared, with its type."""

    model_config = ConfigDict(extra="ignore")


class TaskRecord(RecordModel):
    kind: str | None = None
    main_metric: str
    """The metric that chose the best checkpoint and that result tables report."""
    greater_is_better: bool | None = None
    """Whether a higher ``main_metric`` is better (None: not recorded, a run of an older zoo)."""
    num_outputs: int | None = None
    labels: list[str] | None = None
    """Class (or per-token state) names by output index, as the dataset named them; None: it named none."""


class WeightsRecord(RecordModel):
    """Where a run's base weights came from (:func:`weights_origin`)."""

    kind: str
    """tiny, random, package, hf, checkpoint or source."""
    label: str | None = None
    """``distribution==version`` (package), ``org/repo@revision`` (hf), the path (checkpoint), the source."""
    source: str | None = None
    """The registry's source of the pretrained weights, and their licence."""
    licence: str | None = None


class BackboneRecord(RecordModel):
    name: str
    domain: str | None = None
    description: str | None = None
    fingerprint: str | None = None
    """``sha256:...`` of the base weights before the method was applied (:mod:`zoo.experiment.fingerprint`)."""
    weights: WeightsRecord | None = None


class SplitRecord(RecordModel):
    split: str | None = None
    file: str | None = None
    """Relative to the data root (``sst2/dev.tsv``), never a folder of this machine."""
    rows: int | None = None
    """Examples in the split as read; ``rows_used`` after a ``data.max_*_examples`` subset."""
    rows_used: int | None = None
    selection: str | None = None
    sha256: str | None = None
    canonical: bool | None = None


class DataRecord(RecordModel):
    name: str
    description: str | None = None
    licence: str | None = None
    directory: str | None = None
    """The folder read on this machine (a published file must not name it)."""
    splits: dict[str, SplitRecord] = Field(default_factory=dict)
    """By role: train, val, test."""


class InputTransformRecord(RecordModel):
    """What every input went through before the model saw it (:mod:`zoo.catalog.input_transforms`);
    predictions and evaluations of the run's model apply the same."""

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    """In words: ``inputs are cut to residues 1-56 before the model sees them``."""


class ParameterCounts(RecordModel):
    trainable: int
    total: int | None = None
    """Every parameter of the model (backbone, head, adapter); a published entry records only ``trainable``."""
    backbone: int | None = None
    adapter_bytes: int | None = None

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    @property
    def parameter_reduction_percent(self) -> float:
        return 100.0 * (1.0 - self.trainable / self.backbone) if self.backbone else 0.0


class TrainingRecord(RecordModel):
    steps: int | None = None
    epochs: float | None = None
    stopped_early: bool | None = None
    seconds: float | None = None
    best_metric: float | None = None
    best_step: int | None = None
    machine: str | None = None
    """What trained it (:func:`zoo.experiment.machine.machine_text`): the GPU, or the threads and CPU cores."""


class PrivacyRecord(RecordModel):
    """What a run trained with ``train.privacy`` spent: (epsilon, delta)-DP for each training example (added or
    removed), by the accountant named, for the mechanism below (:mod:`zoo.train.privacy`)."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    max_grad_norm: float
    """The per-example clipping norm C."""
    sample_rate: float
    """Each example's chance to be in a step's Poisson sample (batch_size / train_examples)."""
    steps: int
    expected_batch_size: int | None = None
    train_examples: int | None = None
    target_epsilon: float | None = None
    """The epsilon the noise was calibrated to; None when the noise multiplier was given."""
    planned_steps: int | None = None
    clipping: str | None = None
    """flat (None in records made before the choice existed) or per_tensor (train.privacy.clipping)."""


class MemoryRecord(RecordModel):
    peak_bytes: int | None = None
    kind: str | None = None


class SplitResult(RecordModel):
    metrics: dict[str, Any] = Field(default_factory=dict)
    step: int | None = None
    note: str | None = None


class ReferenceOutputs(RecordModel):
    """The model's raw outputs on a few held-out inputs when the run ended (``zoo push`` turns them into
    the entry's reference predictions, which a pulled copy must reproduce)."""

    role: str | None = None
    inputs: list[Any] = Field(default_factory=list)
    outputs: list[Any] = Field(default_factory=list)
    """One nested list of floats per input (logits), as ``model(collate(inputs))`` gave them in one batch."""
    note: str = ""


class RunRecord(RecordModel):
    record_version: int = RECORD_VERSION
    status: str = "unknown"
    recipe: str | None = None
    command: str | None = None
    started: str | None = None
    updated: str | None = None
    finished: str | None = None
    pid: int | None = None
    host: str | None = None
    error: str | None = None
    resumes: list[dict[str, Any]] = Field(default_factory=list)
    zoo_version: str | None = None
    published: str | None = None
    """``name@version`` of a published adapter read back (:func:`zoo.experiment.run_dir.published_record`)."""
    # what the runner writes once, when the run ends
    config: dict[str, Any] | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    task: TaskRecord | None = None
    backbone: BackboneRecord | None = None
    data: DataRecord | None = None
    input_transform: InputTransformRecord | None = None
    """None: the model sees inputs as they are given."""
    parameters: ParameterCounts | None = None
    training: TrainingRecord | None = None
    memory: MemoryRecord | None = None
    results: dict[str, SplitResult] = Field(default_factory=dict)
    layer_selection: dict[str, Any] | None = None
    changed: list[str] = Field(default_factory=list)
    """Overrides that changed what the recipe's description speaks of (method, backbone, dataset)."""
    reference: ReferenceOutputs | None = None
    privacy: PrivacyRecord | None = None
    """The privacy a ``train.privacy`` run spent; None for ordinary training."""

    @property
    def main_metric(self) -> str | None:
        return self.task.main_metric if self.task else None

    @property
    def num_outputs(self) -> int | None:
        return self.task.num_outputs if self.task else None

    @property
    def written_by_older_zoo(self) -> bool:
        return self.status == "complete" and (self.backbone is None or self.backbone.fingerprint is None)


def _from_older_layout(raw: dict[str, Any]) -> dict[str, Any]:
    """The flat run.json of zoo before record_version 2, in this model's sections."""
    record = {key: raw.get(key) for key in RunRecord.model_fields if key in raw and key != "data"}
    record["record_version"] = 1
    if raw.get("main_metric"):
        record["task"] = {"main_metric": raw["main_metric"], "num_outputs": raw.get("num_outputs")}
    if raw.get("trainable_parameters") is not None:
        record["parameters"] = {"trainable": raw["trainable_parameters"], "total": raw.get("total_parameters")}
    if raw.get("steps") is not None:
        record["training"] = {
            "steps": raw.get("steps"),
            "epochs": raw.get("epochs"),
            "stopped_early": raw.get("stopped_early"),
            "seconds": raw.get("train_seconds"),
            "best_metric": raw.get("best_metric"),
            "best_step": raw.get("best_step"),
        }
    if raw.get("peak_memory_bytes") is not None:
        record["memory"] = {"peak_bytes": raw["peak_memory_bytes"], "kind": raw.get("peak_memory_kind")}
    data = raw.get("data")
    if isinstance(data, dict) and data.get("name"):
        record["data"] = {"name": data["name"], "splits": data.get("splits") or {}}
    return {key: value for key, value in record.items() if value is not None}


def parse_record(raw: dict[str, Any], where: str | Path) -> RunRecord:
    """``run.json`` as a :class:`RunRecord`; a run of an older zoo is read from its flat keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} holds a {type(raw).__name__}, not a run record; train the run again")
    try:
        if "record_version" not in raw:
            return RunRecord.model_validate(_from_older_layout(raw))
        if not isinstance(raw["record_version"], int) or raw["record_version"] > RECORD_VERSION:
            raise ConfigError(
                f"{where} is a run record of version {raw['record_version']!r}; this zoo reads up to "
                f"{RECORD_VERSION}: upgrade zoo"
            )
        return RunRecord.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise ConfigError(f"{where} is not a valid run record ({problems}); train the run again") from None


def dump_record(record: RunRecord) -> dict[str, Any]:
    """The record as run.json holds it (what is unknown left out)."""
    return record.model_dump(mode="json", exclude_none=True)


# -- what the runner knows when a run ends ------------------------------------------------
PACKAGES = ("torch", "transformers", "timm", "open_clip_torch", "fair-esm", "torchaudio", "numpy", "peft", "pydantic")
HF_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{40})")


@functools.cache
def package_versions() -> dict[str, str]:
    from zoo import __version__

    versions = {"python": platform.python_version(), "zoo": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def weights_origin(config: Any, spec: Any) -> WeightsRecord:
    """The base weights of ``config`` by name: a package's ``distribution==version``, a Hugging Face
    revision, the registry's source; a path only for a checkpoint that has no other name."""
    from zoo.catalog.backbones import package_weights

    named = {"source": spec.weights.source, "licence": spec.weights.licence} if spec.weights else {}
    pretrained = config.backbone.pretrained
    if config.tiny:
        return WeightsRecord(kind="tiny", **named)
    if pretrained is False or pretrained in ("false", None):
        return WeightsRecord(kind="random", **named)
    packaged = package_weights(spec)
    if isinstance(pretrained, str) and pretrained != "true":
        path = Path(pretrained).expanduser()
        if packaged is not None and path.resolve() == packaged[0].resolve():
            return WeightsRecord(kind="package", label=packaged[1], **named)
        snapshot = HF_SNAPSHOT.search(path.as_posix())
        if snapshot:
            label = f"{snapshot.group(1)}/{snapshot.group(2)}@{snapshot.group(3)}"
            return WeightsRecord(kind="hf", label=label, **named)
        return WeightsRecord(kind="checkpoint", label=str(pretrained), **named)
    if packaged is not None:  # pretrained=true uses an installed package before any cache or download
        return WeightsRecord(kind="package", label=packaged[1], **named)
    return WeightsRecord(kind="source", label=named.get("source"), **named)


def data_file(source: Any, data_dir: Path | None) -> str | None:
    """The file a split was read from, relative to the data root (``sst2/dev.tsv``), else its name."""
    if source.file is None:
        return None
    if data_dir is not None:
        try:
            return source.file.resolve().relative_to(Path(data_dir).resolve().parent).as_posix()
        except ValueError:
            pass
    return source.file.name


def _machine(model: Any) -> str:
    import torch

    from zoo.experiment.machine import machine_text

    device = next((str(p.device) for p in model.parameters()), "cpu") if model is not None else "cpu"
    return machine_text(device, torch.get_num_threads())


def finished_record(
    progress: RunRecord,
    built: Any,
    report: Any,
    result: Any,
    results: dict[str, Any],
    *,
    fingerprint: str | None,
    reference: ReferenceOutputs | None,
    changed: list[str],
    finished: str,
    memory: dict[str, Any] | None = None,
) -> RunRecord:
    """The whole record of a run that has just ended: ``progress`` (run.json as it was) completed with what
    ``built`` (a :class:`zoo.experiment.build.BuiltRun`), the parameter ``report`` and the trainer's
    ``result`` say."""
    from zoo.experiment.labels import label_names

    config, resolved = built.config, built.resolved
    labels = next((label_names(built.datasets[r]) for r in ("train", "val", "test") if r in built.datasets), None)
    splits = {
        role: SplitRecord(
            split=source.split,
            file=data_file(source, built.data_dir),
            rows=source.rows,
            rows_used=len(built.datasets[role]),
            selection=source.selection or None,
            sha256=source.sha256,
            canonical=source.canonical,
        )
        for role, source in built.sources.items()
        if role in built.datasets
    }
    memory = memory or {}
    transform = resolved.input_transform
    return progress.model_copy(
        update={
            "record_version": RECORD_VERSION,
            "status": "complete",
            "finished": finished,
            "updated": finished,
            "error": None,
            "config": config.to_dict(),
            "versions": package_versions(),
            "task": TaskRecord(
                kind=resolved.task_kind,
                main_metric=built.task.main_metric,
                greater_is_better=built.task.greater_is_better,
                num_outputs=getattr(getattr(built.model, "head", None), "out_features", None),
                labels=labels,
            ),
            "backbone": BackboneRecord(
                name=config.backbone.name,
                domain=resolved.backbone.domain,
                description=resolved.backbone.description,
                fingerprint=fingerprint,
                weights=weights_origin(config, resolved.backbone),
            ),
            "data": DataRecord(
                name=config.data.name,
                description=resolved.dataset.description,
                licence=resolved.dataset.licence,
                directory=str(built.data_dir) if built.data_dir else None,
                splits=splits,
            ),
            "input_transform": InputTransformRecord(**transform.as_record(), description=transform.description)
            if transform is not None
            else None,
            "parameters": ParameterCounts(
                trainable=report.trainable,
                total=report.total,
                backbone=report.backbone,
                adapter_bytes=report.adapter_bytes,
            ),
            "training": TrainingRecord(
                steps=result.steps,
                epochs=result.epochs,
                stopped_early=result.stopped_early,
                seconds=round(result.train_seconds, 3),
                best_metric=result.best_metric,
                best_step=result.best_step,
                machine=_machine(built.model),
            ),
            "memory": MemoryRecord(peak_bytes=memory.get("peak_memory_bytes"), kind=memory.get("peak_memory_kind"))
            if memory
            else None,
            "results": {split: SplitResult.model_validate(entry) for split, entry in results.items()},
            "layer_selection": built.layer_selection,
            "changed": list(changed),
            "reference": reference,
            "privacy": PrivacyRecord.model_validate(result.privacy) if getattr(result, "privacy", None) else None,
        }
    )
