"""Entry point of the ``zoo`` console script."""

from __future__ import annotations

import argparse
import sys

from zoo import __version__
from zoo.cli import demo, ls
from zoo.peft.config import ConfigError

SUBCOMMANDS = (ls, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="Parameter-efficient fine-tuning for every domain.")
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"zoo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
