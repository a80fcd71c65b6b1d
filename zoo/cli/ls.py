"""``zoo ls methods|structures``: what this installation provides."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ls", help="list PEFT methods or backbone structures")
    parser.add_argument("what", choices=("methods", "structures"), nargs="?", default="methods")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoo.peft import get_method, list_methods, list_structures

    if args.what == "methods":
        for name in list_methods():
            spec = get_method(name)
            doc = (__import__(spec.inject.__module__, fromlist=["_"]).__doc__ or "").strip().split("\n\n")[0]
            doc = " ".join(doc.split())
            doc = doc if len(doc) <= 100 else doc[:97] + "..."
            flags = ", ".join(f for f, on in (("mergeable", spec.mergeable), (f"peft:{spec.peft_type}", spec.peft_type)) if on)
            print(f"{name:<12} {doc}" + (f"  [{flags}]" if flags else ""))
    else:
        for name in list_structures():
            print(name)
    return 0
