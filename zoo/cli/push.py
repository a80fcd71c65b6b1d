"""``zoo push RUN_DIR --hub DEST [--name NAME] [--version V]``: publish a finished run's adapter on a hub.

DEST is a folder (served as it is by any web server) or ``hf://org/repo`` (needs Hugging Face
credentials). Files are written first and the index last; a published version is never
overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("push", help="publish a finished run's adapter on a hub (a folder or hf://org/repo)")
    parser.add_argument("run_dir", type=Path, help="a complete run directory made by zoo train")
    parser.add_argument("--hub", required=True, help="destination: a folder, or hf://org/repo[@branch]")
    parser.add_argument(
        "--name", help="<domain>/<task>-<method> (default: from the run's backbone, dataset and method)"
    )
    parser.add_argument("--version", help="default: the next integer version of NAME on the hub")
    parser.add_argument("--licence", help="the adapter's licence (default: the base weights' licence)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a run of full fine-tuning on the same data and test rows: the entry and card state the adapter's "
        "difference from it, with the paired bootstrap's interval",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoo.hub.push import push

    entry = push(
        args.run_dir, args.hub, name=args.name, version=args.version, licence=args.licence, baseline=args.baseline
    )
    for role, result in entry["metrics"].items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items() if isinstance(v, (int, float)))
        print(f"{entry['name']}@{entry['version']}  {role} ({result['split']} split): {shown}")
    if compared := entry.get("compared_with"):
        print(
            f"{entry['name']}@{entry['version']}  against {compared['method']}: {compared['metric']} "
            f"{compared['difference']:+.4f} [{compared['low']:+.4f}, {compared['high']:+.4f}], {compared['verdict']}"
        )
    print(f"zoo pull {entry['name']}@{entry['version']} --hub {args.hub}")
    return 0
