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
    record = runs.read_json(run_dir / runs.RUN_FILE)
    state = record.get("status", "unknown")
    print(f"{run_dir}: {record.get('recipe', '?')} ({state})")
    print(f"  command   {record.get('command', '?')}")
    print(
        f"  started   {record.get('started', '?')}"
        + (f", finished {record['finished']}" if record.get("finished") else "")
    )
    print(
        f"  model     {config.method.name} on {config.backbone.name}"
        f"{' (scale=tiny)' if config.tiny else ''}, data {config.data.name}"
    )
    if record.get("trainable_parameters"):
        print(f"  trainable {record['trainable_parameters']:,} of {record['total_parameters']:,} parameters")
    if state == "complete":
        print(
            f"  steps     {record.get('steps')}; best {record.get('main_metric')} {record.get('best_metric')} "
            f"at step {record.get('best_step')}"
        )
    elif state in ("running", "interrupted", "failed"):
        if record.get("error"):
            print(f"  error     {record['error']}")
        if str(record.get("error", "")).startswith("TrainingDiverged"):  # a resume keeps the lr, and diverges again
            print("  not complete: train it again with a lower train.lr (--resume keeps the settings it diverged with)")
        else:
            command = runs.resume_command(record.get("command", "zoo train RECIPE"), run_dir)
            print(f"  not complete: continue with `{command}`")
    for split, entry in runs.read_json(run_dir / runs.EVAL_FILE).items():
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in entry.get("metrics", {}).items())
        print(f"  {split:<9} {metrics}" + (f"  ({entry['note']})" if entry.get("note") else ""))
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if not p.name.startswith("."))
    print(f"  files     {' '.join(files)}")
    return 0
