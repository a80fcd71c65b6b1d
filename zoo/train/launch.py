"""``python -m zoo.train.launch --nproc N [--module MODULE] ARGS...``: run a command in N processes.

The processes are started by torchrun (``torch.distributed.run --standalone``); each one runs
``python -m MODULE ARGS...`` (default module: the ``zoo`` command line), and the trainer inside
joins the process group by itself. ``zoo train RECIPE --nproc N`` goes through the same helper,
:func:`zoo.train.distributed.launch`.
"""

from __future__ import annotations

import argparse
import sys

from zoo.errors import ConfigError
from zoo.train.distributed import launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.train.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, required=True, help="processes (one per GPU; on CPU, gloo)")
    parser.add_argument("--module", default="zoo.cli.main", help="module each process runs (default: zoo.cli.main)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, e.g. train vision/medical-lora")
    options = parser.parse_args(argv)
    arguments = options.args[1:] if options.args[:1] == ["--"] else options.args
    try:
        return launch(options.nproc, arguments, module=options.module)
    except ConfigError as error:
        print(f"zoo.train.launch: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
