"""The model card (``README.md``) of a finished run: what was trained, how well, and how to redo it."""

from __future__ import annotations

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


def _data_read(sources: dict[str, SplitSource], rows_used: dict[str, int]) -> list[str]:
    lines = ["| split | file | rows | sha256 | |", "|---|---|---|---|---|"]
    for role, source in sources.items():
        label = role if source.split == role else f"{role} (split {source.split})"
        where = f"`{source.file}`" if source.file else "the dataset folder's files"
        where += f" ({source.selection})" if source.selection else ""
        used = rows_used.get(role, source.rows)
        rows = f"{source.rows:,}" if used == source.rows else f"{used:,} of {source.rows:,} (seeded subset)"
        digest = f"`{source.sha256[:12]}`" if source.sha256 else ""
        note = "differs from the canonical file" if source.canonical is False else ""
        lines.append(f"| {label} | {where} | {rows} | {digest} | {note} |")
    return lines


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
) -> str:
    """``sources``: what each split was read from; ``rows_used``: examples per split after any subset;
    ``changed``: the overrides that changed what the recipe's description speaks of (:func:`described_changes`)."""
    method = config.method
    options = ", ".join(f"{k}={v}" for k, v in method.options.items() if v is not None) or "defaults"
    if config.tiny:
        backbone = f"`{backbone_spec.name}`, tiny random-weight configuration (scale=tiny)"
    elif isinstance(config.backbone.pretrained, str):
        backbone = (
            f"`{backbone_spec.name}` ({backbone_spec.description}); local checkpoint `{config.backbone.pretrained}`"
        )
    elif config.backbone.pretrained and backbone_spec.weights is not None:
        weights = backbone_spec.weights
        backbone = f"`{backbone_spec.name}` ({backbone_spec.description}); weights `{weights.source}`, licence {weights.licence}"
    else:
        backbone = f"`{backbone_spec.name}` with random weights (backbone.pretrained=false)"
    dataset = f"`{dataset_spec.name}`: {dataset_spec.description}" + (
        f" (licence {dataset_spec.licence})" if dataset_spec.licence else ""
    )
    if config.tiny:
        dataset = f"`{dataset_spec.name}` synthetic fixture (scale=tiny)"
    settings = config.train
    steps = training.get("steps")
    lines = [
        f"# {recipe}: {method.name} on {backbone_spec.name} for {dataset_spec.name}",
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
        f"| Backbone | {backbone} |",
        f"| Data | {dataset}"
        + (f"; read from `{data_dir}`" if data_dir and not config.tiny else "")
        + ("; files below" if sources else "")
        + " |",
        f"| Task | {task_kind}; model selection on validation `{main_metric}` |",
        f"| Method | `{method.name}` ({options}) |",
        f"| Trainable parameters | {report.trainable:,} of {report.total:,} ({100 * report.trainable_fraction:.4f}%), "
        f"{report.parameter_reduction_percent:.2f}% fewer than full fine-tuning |",
    ]
    if report.adapter_bytes is not None:
        lines.append(f"| Adapter size | {report.adapter_bytes / 1024:.1f} KiB |")
    lines += [
        f"| Training | {steps} optimizer steps ({training.get('epochs', 0):.2f} epochs), lr {settings.lr}, "
        f"batch {settings.batch_size} x {settings.grad_accum}, {settings.precision}, seed {settings.seed}"
        + (", stopped early" if training.get("stopped_early") else "")
        + (f", {training['seconds']:.1f} s" if training.get("seconds") else "")
        + " |",
        "",
        *(["## Data read", "", *_data_read(sources, rows_used or {}), ""] if sources else []),
        "## Results",
        "",
        *_metrics_table(results, main_metric),
        "",
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
        f'built = zoo.load_run("{run_dir}").build()   # the backbone from config.yaml, adapter/ loaded',
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
    return "\n".join(lines)
