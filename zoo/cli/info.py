"""``zoo info RUN_DIR``: what a run is, how far it got, and how well it did."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("info", help="summarise a run directory")
    parser.add_argument("run_dir", type=Path)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoo.experiment import run_dir as runs

    run_dir = args.run_dir
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir} does not exist; give the folder of a run (runs/<recipe>, or its --out)")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is a file, not a run directory; give the folder of a run")
    config = runs.read_config(run_dir)
    record = runs.read_record(run_dir)
    state = record.status
    print(f"{run_dir}: {record.recipe or '?'} ({state})")
    print(f"  command   {record.command or '?'}")
    print(f"  started   {record.started or '?'}" + (f", finished {record.finished}" if record.finished else ""))
    print(
        f"  model     {config.method.name} on {config.backbone.name}"
        f"{' (scale=tiny)' if config.tiny else ''}, data {config.data.name}"
    )
    if record.parameters:
        total = f" of {record.parameters.total:,}" if record.parameters.total else ""
        print(f"  trainable {record.parameters.trainable:,}{total} parameters")
    if record.backbone and record.backbone.fingerprint:
        print(f"  weights   fingerprint {record.backbone.fingerprint}")
    if state == "complete" and record.training:
        training = record.training
        print(
            f"  steps     {training.steps}; best {record.main_metric} {training.best_metric} "
            f"at step {training.best_step}"
        )
    elif state in ("running", "interrupted", "failed"):
        if record.error:
            print(f"  error     {record.error}")
        if (record.error or "").startswith("TrainingDiverged"):  # a resume keeps the lr, and diverges again
            print("  not complete: train it again with a lower train.lr (--resume keeps the settings it diverged with)")
        else:
            command = runs.resume_command(record.command or "zoo train RECIPE", run_dir)
            print(f"  not complete: continue with `{command}`")
    for split, entry in runs.read_json(run_dir / runs.EVAL_FILE).items():
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in entry.get("metrics", {}).items())
        print(f"  {split:<9} {metrics}" + (f"  ({entry['note']})" if entry.get("note") else ""))
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if not p.name.startswith("."))
    print(f"  files     {' '.join(files)}")
    return 0
