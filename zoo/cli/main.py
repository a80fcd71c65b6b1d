"""Entry point of the ``zoo`` console script.

Exit status: 0 on success; 2 for bad input (a recipe, override, path or name), reported as one
line; 1 when a backbone library does not load (torchaudio built for another torch, say),
reported with the broken package, the reason and the fix command, as ``zoo doctor`` does.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings

from zoo import __version__
from zoo.cli import (
    cp,
    demo,
    doctor,
    eval,
    export,
    info,
    ls,
    merge,
    predict,
    pull,
    push,
    reproduce,
    results,
    serve,
    train,
    tune,
    validate,
)

SUBCOMMANDS = (
    ls,
    train,
    eval,
    validate,
    cp,
    info,
    demo,
    tune,
    reproduce,
    results,
    push,
    pull,
    predict,
    serve,
    merge,
    export,
    doctor,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="Parameter-efficient fine-tuning for every domain.")
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(commands)
    return parser


def _errors() -> tuple[type[BaseException], ...]:
    """What a user's input can cause: reported as one clear line, without a traceback."""
    from zoo.catalog.backbones import PretrainedUnavailable
    from zoo.catalog.download import DownloadError
    from zoo.catalog.registry import UnknownNameError
    from zoo.errors import ConfigError
    from zoo.train.checkpoint import CheckpointError

    return (
        ConfigError,
        ValueError,
        FileNotFoundError,
        PretrainedUnavailable,
        DownloadError,
        UnknownNameError,
        CheckpointError,
        FloatingPointError,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Overrides may come after options (`zoo train R --out d train.lr=1e-3`): collect the leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "accepts_overrides", False) or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    args.argv = argv
    # One line per warning (e.g. a local data copy that differs from the canonical file), no source line.
    warnings.formatwarning = lambda message, category, *_, **__: f"zoo: {category.__name__}: {message}\n"
    typed = "zoo " + shlex.join(argv)
    # Under torchrun (zoo train --nproc N) the parent passes the command as the user typed it.
    args.command_line = os.environ.get("ZOO_COMMAND", typed) if "LOCAL_RANK" in os.environ else typed
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as error:
        from zoo.environment import diagnose

        # A library that does not load (ImportError, linker OSError) says so, not a traceback from inside it.
        problem = diagnose(error)
        if problem is not None:
            print(problem.report(f"zoo {args.command}"), file=sys.stderr)
            return 1
        if isinstance(error, _errors()):
            print(f"zoo {args.command}: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
